"""Benchmarks for keysetd (`make bench`); not tests: figures beside targets, no assertions."""
