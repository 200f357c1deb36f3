"""Pure unit tests for lepton_core (no orchestrator, tracker or network)."""
