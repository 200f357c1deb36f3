"""Effects: adapters with side effects but no Prefect, in sub-packages by concern.

Bottom to top (an import-linter layers contract keeps every import pointing down):
runtime < state < data < tracking < training | serving < monitoring.
"""
