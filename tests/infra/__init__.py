"""Static checks of infra/: compose file, Dockerfiles, work-pool templates (no Docker engine)."""
