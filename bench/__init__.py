"""Benchmarks for the SPEC section 8 targets (`make bench`)."""
