"""Benchmarks behind ``efcomm bench``."""
