"""Checking what a run asks of the Ray cluster before asking (kept free of heavy imports: the CLI
imports ResourceError on every call)."""
from __future__ import annotations

from ..errors import ResourceError  # noqa: F401  (re-exported)


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


def connect(address: str | None, timeout_s: float = 5.0, env_vars: dict | None = None) -> None:
    """The one Ray start-up: join the cluster at `address` (auto, HOST:PORT or ray://HOST:PORT) or,
    without one, start Ray in-process with the dashboard (whose state API lets Train clean up the
    placement groups of stopped runs, docs/design.md#ray-patterns-and-pitfalls). An address nothing answers at is refused with one
    line: ray.init would retry it for minutes. `env_vars`: set in every worker (storage.worker_env()
    for a sweep or run on object storage)."""
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto":
        host, port = _host_port(address)
        import socket

        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as e:
            raise ResourceError(f"--address {address}: no Ray cluster answers at {host}:{port} "
                                f"({e.strerror or type(e).__name__}); start one with `ray start --head` or fix the address"
                                ) from None
    try:
        ray.init(address=address or None, namespace="mlem_ray",
                 **({"runtime_env": {"env_vars": env_vars}} if env_vars else {}),
                 **({} if address else {"include_dashboard": True, "dashboard_host": "127.0.0.1"}))
    except ConnectionError as e:
        raise ResourceError(f"--address {address}: {' '.join(str(e).split())[:200]}") from None


def _host_port(address: str) -> tuple[str, int]:
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ResourceError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)
