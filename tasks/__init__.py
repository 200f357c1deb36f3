"""Prefect tasks only: one module per stage, each `@task` loads its inputs, makes one
core call and saves/logs the outputs through the effects layer (retries, timeouts
and caching on the decorator)."""
