"""Training: the plain stage functions that dvc repro and the tasks share, and data-parallel training."""
