"""Runtime: settings, the live stack's records, processes and their identity, locks, retries, the S3 helper."""
