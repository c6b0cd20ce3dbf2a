"""Placeholder until the `maps` commands land."""
