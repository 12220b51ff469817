"""The streaming side of streamscore: ``settings``, the CLI, and three rooms.

``worker/`` the running service (Faust app, stages, drift agent, serving, metrics);
``kafka/`` Kafka plumbing (clients, delivery, topics, security, guarantees, embedded broker);
``commands/`` the CLI's longer jobs (replay, rescore, demo, bench). ``cli.py`` only parses
and dispatches. May import ``models``, ``schemas`` and ``training``; nothing imports it but
its own rooms.
"""
