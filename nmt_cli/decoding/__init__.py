"""Decoding: search over a trained model (or an exported one) and the translate command."""
