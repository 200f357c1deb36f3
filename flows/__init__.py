"""Prefect flows (wiring only) and the `lepton` command line."""
