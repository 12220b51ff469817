"""Training side of streamscore: data loading, fitting, fine-tuning, evaluation, drift evaluation.

May import ``models`` and ``schemas``; nothing from ``streams``. The registry the worker reads
lives in ``models/registry.py``.
"""
