"""Kafka plumbing: client options and security, delivery, topics, guarantees, the embedded
broker, Faust's transport tweak and the few library internals we must touch (``internals``).

May import ``schemas`` and ``streams.settings``; nothing from ``streams.worker``,
``streams.commands``, ``models`` or ``training``.
"""
