"""State: the drift monitor's claims, batches and events, behind one interface (file and SQL backends)."""
