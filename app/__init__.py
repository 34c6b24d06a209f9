"""gpt2-serve: a GPT-2 inference service."""

import os

# OpenBLAS (numpy's BLAS, used for one-row GEMMs on CPU) otherwise spins its threads for ~0.1 s
# after every call, starving torch's threads in the next step. Read once, when numpy loads.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
