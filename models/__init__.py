"""Numeric parts of a streamscore model: embedder, classifier head, OOD scorer, artifacts."""
