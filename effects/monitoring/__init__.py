"""Monitoring: reference profiles, batches, drift checks and the Evidently report."""
