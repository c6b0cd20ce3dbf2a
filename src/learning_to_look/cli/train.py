"""Placeholder until the `train` commands land."""
