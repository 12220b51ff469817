"""Training side of streamscore: data loading, fitting, evaluation and the model registry."""
