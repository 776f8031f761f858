"""Helpers of the example app (train_model.py): data, models, checkpoints. Knows nothing of the launcher."""
