"""Load tests, micro-benchmarks and their reports (see bench/run.py).

Like the service (service/__init__.py), every bench process pins BLAS to one thread
before numpy loads, so what a benchmark times in-process runs as it does when served.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
