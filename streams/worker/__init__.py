"""The running worker: the Faust app wired once (``app``), its named stages (``stages``,
``offsets``, ``batch``), the drift agent, the model in service, metrics and health.

May import ``models``, ``schemas``, ``streams.settings`` and ``streams.kafka``; not
``streams.commands`` or ``training``.
"""
