"""The ``streamscore`` commands, a module each: its flags (``options``), its run and, for the longer
ones, its job (Faust's ``faust/cli/`` is the model). ``base.py`` holds what they share. May import
anything in the project; nothing but ``streams.cli`` imports them.
"""

# In the order ``streamscore --help`` lists them; each module has a ``COMMAND``.
COMMANDS = (
    "topics",
    "broker",
    "train",
    "evaluate",
    "worker",
    "bench",
    "produce",
    "replay",
    "rescore",
    "themes",
    "ui",
    "dlq",
    "tail",
    "models",
    "drift_eval",
    "demo",
)
