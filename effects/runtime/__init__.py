"""Runtime: where things live (settings), the live stack's records, processes and their identity, locks, retries and the one S3 helper."""
