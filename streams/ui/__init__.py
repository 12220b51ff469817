"""``streamscore ui``: a web page of the fleet, read from its Kafka topics."""
