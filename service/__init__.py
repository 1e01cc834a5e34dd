"""audioserve: dynamic batching for audio models on ONNX Runtime.

BLAS libraries are pinned to one thread before numpy loads: ONNX Runtime owns the cores,
and multi-threaded BLAS under contention made the mel front-end 3-4x slower (see notes).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
