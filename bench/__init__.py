"""Benchmarks: the saga engine against a plain Celery chain (`python bench/throughput.py`)."""
