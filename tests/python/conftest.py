"""Shared pytest configuration for the Python tests (run by scripts/test.sh against the
installed package)."""
