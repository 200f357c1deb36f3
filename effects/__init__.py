"""Effects: MLflow, DVC, S3 and Evidently adapters, settings, state files and locks. No Prefect here."""
