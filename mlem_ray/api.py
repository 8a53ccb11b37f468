"""The Python API: what a notebook needs, each function one call into the layer that owns the work
(docs/design.md#python-api). `import mlem_ray` stays light: this module is imported on first use of
one of its names, and each function imports its layer when called.

    seqs = mlem_ray.prepare(events, "data/p", spec=INGEST_SPEC, targets=targets)
    best = mlem_ray.pretrain("data/p", "coles", "runs/coles", epochs=2)
    frame = mlem_ray.load_encoder(best).embed(seqs)        # one row per sequence id
"""
from __future__ import annotations

import dataclasses
from pathlib import Path


def _as_table(table, what: str):
    """A pyarrow Table from a Table, a pandas DataFrame, or a Parquet/CSV file."""
    import pyarrow as pa

    from .data.ingest import read_table

    if isinstance(table, (str, Path)):
        return read_table(table, what)
    if isinstance(table, pa.Table):
        return table
    if hasattr(table, "to_parquet") and hasattr(table, "columns"):  # a pandas DataFrame
        return pa.Table.from_pandas(table, preserve_index=False)
    from .errors import UsageError

    raise UsageError(f"{what}: expected a pyarrow Table, a pandas DataFrame or a file path, got {type(table).__name__}")


def prepare(events, out, *, spec=None, targets=None, overwrite: bool = False, **fields):
    """A flat event table (a pyarrow Table, a pandas DataFrame, or a Parquet/CSV path) and an optional
    target table -> a prepared data set written atomically to `out`; returns it opened.

    `spec`: an `IngestSpec` (e.g. `mlem_ray.data.pendulum.INGEST_SPEC`); `fields` are IngestSpec
    fields set on top of it, or instead of it (`id_col=`, `time_col=`, `cat_cols=`, `num_cols=`,
    `target_col=`, `task=`, `time_unit=`, `max_len=`, `min_len=`, `min_count=`, `test_fraction=`,
    `seed=`), as `mlem-ray data ingest` takes them."""
    from .data.ingest import IngestSpec
    from .data.ingest import prepare as encode
    from .data.prepared import EventSequences, write_prepared

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    spec = dataclasses.replace(spec, **fields) if spec is not None else IngestSpec(**fields)
    target_table = _as_table(targets, "target") if targets is not None else None
    if target_table is not None and spec.target_col is None:
        others = [c for c in target_table.column_names if c != spec.id_col]
        if len(others) == 1:
            spec = dataclasses.replace(spec, target_col=others[0])
    if not spec.source:
        spec = dataclasses.replace(spec, source=str(events) if isinstance(events, (str, Path)) else "python table")
    write_prepared(out, *encode(_as_table(events, "events"), spec, target_table), overwrite=overwrite)
    return EventSequences.open(out)


def open_data(path):
    """A prepared data set (a directory or a storage URI), memory-mapped: `EventSequences`."""
    from .data.prepared import EventSequences

    return EventSequences.open(path)


def pretrain(data, method: str, out, *, epochs: int | None = None, teacher=None, config=None,
             overrides: dict | None = None, resume: bool = False, overwrite: bool = False,
             workers: int = 1, gpus_per_worker: float = 0.0, address: str | None = None) -> str:
    """Train one encoder, as `mlem-ray pretrain` does; -> the location of its best checkpoint.

    `config`: a YAML file (as `--config`), or a `Config` / nested dict; `overrides`:
    {"section.key": value} (as `--set`). Refusals (a bad key, no targets for supervised, a missing
    teacher, `out` already holding a run without `resume` or `overwrite`) raise a UserError."""
    from . import storage
    from .config import Config
    from .training.run import PretrainJob, read_config_file, run_overrides, run_pretrain

    # The run's lifecycle (resume, overwrite, staging to object storage, Ray Train) is
    # training/run.py's, as it is for the CLI; this only turns Python values into its job.
    if isinstance(config, Config):
        base = config.to_dict()
    elif isinstance(config, dict):
        base = config
    else:
        base = read_config_file(config) if config else None
    job = PretrainJob(method=method, data=str(data), out=str(out), base=base,
                      overrides=run_overrides(overrides or {}, epochs, teacher), resume=resume, overwrite=overwrite,
                      workers=workers, gpus_per_worker=gpus_per_worker, address=address)
    return storage.join(run_pretrain(job).out, "best")


class Encoder:
    """A trained encoder loaded from a checkpoint. `embed(data)` gives one embedding per sequence."""

    def __init__(self, checkpoint, device: str = "cpu"):
        from .training.checkpoint import load_encoder as load

        self.device = device
        self.module, self.checkpoint = load(str(checkpoint), device=device)

    @property
    def config(self):
        return self.checkpoint.config

    @property
    def schema(self):
        return self.checkpoint.schema

    @property
    def dim(self) -> int:
        return self.module.out_dim

    def embed(self, data, splits=(), as_array: bool = False, batch_size: int = 256):
        """Embeddings of the sequences of `data` (a prepared data set: a path, a URI or an opened
        `EventSequences`, with this checkpoint's schema), in data-set order, only `splits` (train,
        val, test) when given. -> a pandas DataFrame indexed by sequence id with columns
        e0..e{dim-1} (and `split`, `target` where the data set has them), or with `as_array` the
        (sequences, dim) float32 array."""
        from .data.prepared import EventSequences
        from .evaluation.embed import embed_rows, embedding_table
        from .training.checkpoint import check_schema

        seqs = data if isinstance(data, EventSequences) else EventSequences.open(data)
        check_schema(self.checkpoint, seqs.schema)
        rows = seqs.indices(*splits) if splits else seqs.indices()
        max_len = self.checkpoint.state["trainer"].get("max_len", seqs.schema.max_len)
        emb = embed_rows(self.module, seqs, rows, max_len, batch_size=batch_size, device=self.device)
        if as_array:
            return emb
        return embedding_table(seqs, rows, emb, wide=True).to_pandas().set_index("id")

    def __repr__(self) -> str:
        return f"Encoder({self.config.objective.method}, {self.config.model.encoder}, dim {self.dim})"


def load_encoder(checkpoint, device: str = "cpu") -> Encoder:
    """The encoder of a checkpoint directory (or its storage URI), e.g. `RUN/best`."""
    return Encoder(checkpoint, device)


def sweep(out, *, data=None, space=None, trials: int | None = None, methods=(), address: str | None = None,
          resume: bool = False, workers_per_trial: int = 1, gpus_per_worker: float = 0.0, eval_gpus: float = 0.0,
          sequences: int | None = None, trackers=()) -> dict:
    """The main job, as `mlem-ray sweep`: the two-stage MLEM sweep (or the space's stages) into `out`
    (a path or an object-store URI). -> the summary: each stage's method, scored count and best row."""
    from .sweep.pipeline import DEMO_SEQUENCES, SweepJob, run_sweep

    settings = SweepJob(out=str(out), data=str(data or ""), space=str(space or ""), trials=trials or 0,
                        methods=list(methods), workers_per_trial=workers_per_trial, gpus_per_worker=gpus_per_worker,
                        eval_gpus=eval_gpus, sequences=sequences or DEMO_SEQUENCES,
                        trackers=list(dict.fromkeys(trackers)))
    return run_sweep(settings, address=address, resume=resume)
