"""Event-sequence data: schema, ingestion, the prepared format, batching, bundled data sets.

Names are imported on first use (PEP 562): `from mlem_ray.data.schema import DataError` (the CLI
does, at start-up) must not pull in torch through batching.
"""
from importlib import import_module

_WHERE = {
    "FullCollator": "batching", "PaddedBatch": "batching", "SequenceDataset": "batching",
    "SliceCollator": "batching", "SliceSampler": "batching", "gather_windows": "batching",
    "IngestSpec": "ingest", "ingest": "ingest", "prepare": "ingest", "read_table": "ingest",
    "EventSequences": "prepared", "write_prepared": "prepared",
    "DataError": "schema", "Schema": "schema",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
