"""Exporters of trained checkpoints to inference engines (``nmt export``)."""
