"""lmdir's restorer: the model, its trainer, evaluation and inference."""
