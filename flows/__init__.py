"""Prefect flows only: wiring of tasks, no maths and no file I/O."""
