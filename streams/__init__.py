"""The streaming side of streamscore: ``settings``, the CLI, and three rooms.

``worker/`` the running service (Faust app, stages, drift agent, serving, metrics);
``kafka/`` Kafka plumbing (clients, delivery, topics, security, guarantees, embedded broker);
``commands/`` a module per command: its flags, its run and its job. ``cli.py`` is ``main``:
global flags, logging, exit codes. May import ``models``, ``schemas`` and ``training``; nothing imports it but
its own rooms.
"""
