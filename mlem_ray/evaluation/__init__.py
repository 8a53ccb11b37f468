"""Evaluation of a frozen embedding: downstream probes and embedding-quality measures (docs/method.md#evaluating-an-embedding)."""
