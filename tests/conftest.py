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


# A two-stage space small enough to kill and resume mid-sweep (test_sweep_resume, test_object_storage).
RESUMABLE_TWO_STAGE = {
    "stages": {
        "teacher": {
            "method": "coles",
            "sweep": {"trials": 3, "scheduler": "none", "epochs": 3, "finalists": 3},
            "params": {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2}, "model.hidden": 16,
                       "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20, "train.steps_per_epoch": 3},
        },
        "mlem": {
            "method": "mlem",
            "sweep": {"trials": 2, "scheduler": "none", "epochs": 2, "finalists": 1},
            "params": {"objective.w_align": {"type": "log_float", "low": 1.0, "high": 100.0}, "model.hidden": 16,
                       "model.decoder_width": 16, "model.decoder_layers": 1, "data.batch_size": 16,
                       "train.steps_per_epoch": 3},
        },
    }
}
