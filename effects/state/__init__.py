"""State: the drift monitor's claims, accepted and rejected batches and events, behind one interface with a file and a SQL backend."""
