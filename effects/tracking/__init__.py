"""Tracking and registry: MLflow runs, tags, the logged pyfunc, the promotion gate, variants, sweep runs, figures and summaries."""
