"""Load tests, micro-benchmarks and their reports (see bench/run.py)."""
