"""The streaming side of streamscore: settings, Faust app and agents, topics, CLI."""
