"""Numeric parts of a streamscore model: embedder, classifier head, OOD scorer, drift detectors,
artifacts and the registry that serves them.

May import ``schemas``; nothing from ``streams`` or ``training``.
"""
