"""Measurement scripts: benchmarks, load tests, hostile-input measurements (run as modules: python -m scripts.NAME)."""
