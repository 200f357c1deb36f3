"""Data: raw sources (local, S3), format detection, and prepared datasets versioned with DVC."""
