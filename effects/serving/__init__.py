"""Serving: the model server's prediction log and offline batch scoring."""
