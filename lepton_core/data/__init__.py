"""Data formats, validation, de-duplication, splitting and packing."""
