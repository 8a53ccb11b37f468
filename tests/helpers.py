"""Set-ups the tests share: tiny Pendulum data sets, tiny two-stage search spaces, a scoped Ray
instance and a scoped S3 server. Fixtures built on them are in conftest.py; test modules import these by name
(`from helpers import ...`) where they need one outside a fixture."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from mlem_ray.data import pendulum, prepare, write_prepared


def make_pendulum(path: Path, sequences: int, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.2) -> Path:
    """A small prepared Pendulum set (regression target L) at `path`."""
    events, targets = pendulum.generate(sequences, seed=seed)
    spec = dataclasses.replace(pendulum.INGEST_SPEC, test_fraction=test_fraction, val_fraction=val_fraction)
    write_prepared(path, *prepare(events, spec, targets))
    return path


# The sizes every tiny two-stage space shares: a 16-wide GRU on CoLES slices of 5..20 events, a
# one-layer 16-wide decoder, batches of 16 sequences.
TINY_TEACHER = {"model.hidden": 16, "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20}
TINY_MLEM = {"model.hidden": 16, "model.decoder_width": 16, "model.decoder_layers": 1, "data.batch_size": 16}
LR = {"type": "log_float", "low": 1e-3, "high": 1e-2}
W_ALIGN = {"type": "log_float", "low": 1.0, "high": 100.0}


def two_stage_space(teacher_sweep: dict, mlem_sweep: dict, steps: int = 3, teacher_params: dict | None = None,
                    mlem_params: dict | None = None) -> dict:
    """A tiny two-stage (CoLES teacher, then MLEM) search space: the teacher sweeps optim.lr, MLEM
    objective.w_align, each `steps` optimizer steps an epoch; `*_params` add or replace params."""
    return {"stages": {
        "teacher": {"method": "coles", "sweep": teacher_sweep,
                    "params": {"optim.lr": LR, **TINY_TEACHER, "train.steps_per_epoch": steps, **(teacher_params or {})}},
        "mlem": {"method": "mlem", "sweep": mlem_sweep,
                 "params": {"objective.w_align": W_ALIGN, **TINY_MLEM, "train.steps_per_epoch": steps,
                            **(mlem_params or {})}},
    }}


# Small enough to kill and resume mid-sweep (test_sweep_resume, test_object_storage).
RESUMABLE_TWO_STAGE = two_stage_space({"trials": 3, "scheduler": "none", "epochs": 3, "finalists": 3},
                                      {"trials": 2, "scheduler": "none", "epochs": 2, "finalists": 1})

def torch_gru_reference(inputs: int, hidden: int, layers: int, lengths: list[int], seed: int = 0):
    """The reference the project's own GRU paths are held to: a float64 torch GRU, random padded
    rows of `lengths` (0 allowed), and its last hidden state through torch's unsorted packing.
    -> (rnn, x, lengths tensor, reference)."""
    import torch

    torch.manual_seed(seed)
    rnn = torch.nn.GRU(inputs, hidden, num_layers=layers, batch_first=True).double()
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), int(lengths.max()), inputs, dtype=torch.double, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.clamp_min(1), batch_first=True, enforce_sorted=False)
    return rnn, x, lengths, rnn(packed)[1][-1]


def assert_same_values_and_gradients(got, ref, wrt, tol: float = 1e-12) -> None:
    """`got` equals `ref`, and so do their gradients with respect to every tensor of `wrt` under
    one random weighting of the outputs."""
    import torch

    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    weights = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), wrt), torch.autograd.grad((ref * weights).sum(), wrt)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# The evaluation probes at a size that tests the plumbing, not the scores: 2 folds and 30 boosting
# iterations (the defaults, 5 and 300, cost a tiny sweep most of its time in scoring).
FAST_PROBE = {"folds": 2, "tree_iters": 30}
FAST_PROBE_ARGS = ["--folds", str(FAST_PROBE["folds"]), "--tree-iters", str(FAST_PROBE["tree_iters"])]

RAY_DEFAULTS = {"address": "local", "num_cpus": 2, "include_dashboard": False, "namespace": "mlem_ray"}


@contextlib.contextmanager
def ray_instance(**options):
    """A Ray instance of this process for the block: local, 2 CPUs, no dashboard unless `options`
    say otherwise; shut down after it, whatever happens inside."""
    import ray

    ray.init(**{**RAY_DEFAULTS, **options})
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def s3_environment(root: Path, bucket: str):
    """A real S3 server (s3server.S3Server) under `root` holding `bucket`, with its endpoint and
    checksum settings in this process's environment and the node cache under `root`; the
    environment is restored and the server stopped when the block ends."""
    from s3server import S3Server

    saved = dict(os.environ)
    with S3Server(root) as server:
        server.make_bucket(bucket)
        os.environ.update(server.env)
        os.environ["MLEM_RAY_CACHE"] = str(root / "cache")
        try:
            yield server
        finally:
            os.environ.clear()
            os.environ.update(saved)


def file_snapshot(*roots: Path) -> dict:
    """Every file and directory under `roots` with its size and modification time: equal before and
    after a refused command means it wrote and changed nothing there."""
    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                seen[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return seen
