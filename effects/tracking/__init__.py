"""Tracking and registry: MLflow runs, tags, the pyfunc, the gate, variants, sweeps, figures, summaries."""
