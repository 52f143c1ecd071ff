"""Training: the training loop, its optimizer and schedule, runs, workers, metrics and averaging."""
