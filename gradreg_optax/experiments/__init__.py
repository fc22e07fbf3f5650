"""Experiments, training recipes and models built on the public API."""
