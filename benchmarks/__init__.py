"""Benchmarks for lmlab (run as scripts, e.g. `python benchmarks/overhead.py`)."""
