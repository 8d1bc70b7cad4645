"""Benchmarks: `./dev bench` (all) or `python -m bench.NAME` (one). Each prints a table."""
