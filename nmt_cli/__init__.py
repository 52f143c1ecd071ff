"""nmt: neural machine translation from a bitext, in five commands."""

import os

__version__ = "0.1.0"

# oneDNN, which runs torch's bf16 products on the CPU, compiles a kernel for every new product
# shape (about 2 ms each on a 2-core Xeon with AMX) and keeps only the last 1,024 by default.
# Token batches give a Transformer a few thousand shapes (3,072 in its first 600 updates on
# Multi30k), so at the default training never stopped compiling: 13% of a step in the first 150
# updates, and the run slowed down as it went. oneDNN sizes its cache at its first product, so
# this has to happen before any; a value the user set wins.
ONEDNN_CACHE_CAPACITY = 8192
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))
