"""Synthetic data with known answers for tests and benchmarks."""
