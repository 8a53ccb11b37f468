"""Shared test helpers."""
from pathlib import Path

from mlem_ray.data import pendulum, prepare, write_prepared
from mlem_ray.data.ingest import IngestSpec


def make_pendulum(path: Path, sequences: int, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.2) -> Path:
    """A small prepared Pendulum set (regression target L) at `path`."""
    events, targets = pendulum.generate(sequences, seed=seed)
    spec = IngestSpec(id_col="id", time_col="time", num_cols=("x", "y"), target_col="L", task="regression",
                      test_fraction=test_fraction, val_fraction=val_fraction)
    write_prepared(path, *prepare(events, spec, targets))
    return path
