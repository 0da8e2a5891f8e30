"""Reproducible performance and quality measurements; `make bench` runs them all."""
