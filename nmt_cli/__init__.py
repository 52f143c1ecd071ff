"""nmt: neural machine translation from a bitext, in five commands."""

import os

__version__ = "0.1.0"

# oneDNN (torch's bf16 CPU products) compiles a kernel per product shape and keeps the last 1,024
# by default; token batches give a Transformer thousands, so training kept recompiling
# (docs/results.md). It must be set before the first product; a value the user set wins.
ONEDNN_CACHE_CAPACITY = 8192
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))
