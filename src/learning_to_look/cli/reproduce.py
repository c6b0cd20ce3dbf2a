"""Placeholder until the `reproduce` commands land."""
