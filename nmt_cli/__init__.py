"""nmt: neural machine translation from a bitext, in five commands."""

__version__ = "0.1.0"
