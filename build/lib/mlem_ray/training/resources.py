"""Checking what a run asks of the Ray cluster before asking (kept free of heavy imports: the CLI
imports ResourceError on every call)."""
from __future__ import annotations


class ResourceError(ValueError):
    """Resources asked for that the cluster does not have: one line, exit code 2."""


def check_gpus(gpus_per_worker: float, workers: int = 1, resources: dict | None = None) -> None:
    """Fail fast: asking Ray for GPUs the cluster does not have makes it wait forever."""
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    have, need = resources.get("GPU", 0.0), gpus_per_worker * workers
    if gpus_per_worker > 0 and have < need:
        raise ResourceError(f"asked for {need:g} GPUs ({workers} worker(s) x --gpus-per-worker {gpus_per_worker:g}) "
                            f"but the Ray cluster has {have:g}; drop the flag to train on CPU or join a GPU cluster "
                            "with --address")
