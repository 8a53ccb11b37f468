"""Sweeps: search spaces, Ray Tune stages, the two-stage MLEM pipeline, reports."""
