"""Prefect tasks: one module per stage. Each loads inputs, calls one lepton_core
function, and saves/logs the outputs (MLflow, DVC). The plain stage functions here
are also what `dvc.yaml` runs."""
