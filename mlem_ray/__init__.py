"""mlem_ray: distributed hyperparameter search for self-supervised event-sequence encoders.

The Python API (docs/design.md#python-api): `prepare`, `open_data`, `pretrain`, `load_encoder`,
`sweep`, `Config`, `make_config`. Names are resolved on first use (PEP 562), so `import mlem_ray`
imports neither torch nor Ray nor Optuna; calling a function imports what it needs.
"""
import os
from importlib import import_module

# Arrow's allocator (mimalloc) keeps freed pages for a while before returning them to the OS; on
# a large ingest that retention alone was ~50 MB per GB of decode buffers. Purge at once instead
# (must be set before pyarrow is first imported; a user's own setting wins).
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

__version__ = "0.1.0"

_WHERE = {
    "prepare": "api", "open_data": "api", "pretrain": "api", "load_encoder": "api", "sweep": "api",
    "Encoder": "api", "Config": "config", "make_config": "config", "UserError": "errors",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "sweep":  # the subpackage, callable as the API's sweep() (mlem_ray/sweep/__init__.py)
        return import_module(".sweep", __name__)
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
