"""Evaluation of a frozen embedding: downstream probes and embedding-quality measures (METHOD.md section 5)."""
