"""GPU figures of the real training loop and embedding code, with the same workload on CPU for the
ratio. Run through benchmarks/gpu_check.sh (which bounds it to 5 minutes); prints one JSON line
per figure, and appends them to --json.

Workload (docs/design.md#benchmark-workload): 10,000 clients x ~100 events (make_synthetic_events.py when
found, else the same-shaped table of benchmarks/ingest.py); GRU 256, mcc embedding 16, channel 4.
- coles_train: batch 64 clients x 5 slices of 25..100 events, through `training.loop.train`
  (pinned batches, train.precision, and loader_workers / prefetch where a figure says so), timed
  between steps inside one epoch. Variants: bf16 with the GRU recurrence in bf16 too (gru_fp32
  false), batch 256, DataLoader workers, the prefetch thread; --profile adds per-op device times.
- mlem_train: MLEM (transformer decoder, SigLIP to a frozen CoLES teacher: the checkpoint the
  fp32 CoLES figure just wrote), batch 64 whole sequences (up to 1000 events).
- infer: `evaluation.embed.embed_rows` over every client, batch 256, whole sequences.
- ray_train_startup: TorchTrainer with 1 GPU worker, from fit() to the worker's first line, and
  the whole fit of a 20-step run (only where ray imports).
Every figure reports peak GPU memory (torch.cuda.max_memory_allocated) where it ran on the GPU.
A figure that fails prints an "error" line and the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHARED_GENERATOR = HERE.parents[1] / "shared" / "bench" / "make_synthetic_events.py"
JSON_PATH: Path | None = None


def emit(figure: str, **values) -> None:
    line = json.dumps({"figure": figure, **values})
    print(line, flush=True)
    if JSON_PATH is not None:
        with open(JSON_PATH, "a") as f:
            f.write(line + "\n")


def guarded(figure: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # one figure failing must not cost the others
        emit(figure, error=f"{type(e).__name__}: {e}"[:500], where=traceback.format_exc(limit=-3)[-800:])
        return None


def make_data(tmp: Path, generator: Path | None, clients: int) -> Path:
    from mlem_ray.data.ingest import IngestSpec, ingest

    generator = generator or (SHARED_GENERATOR if SHARED_GENERATOR.exists() else None)
    if generator is not None:
        subprocess.run([sys.executable, str(generator), "--clients", str(clients), "--mean-events", "100",
                        "--seed", "0", "--out", str(tmp / "synth")], check=True, capture_output=True)
        source = tmp / "synth" / "events.parquet"
    else:
        import pyarrow.parquet as pq

        sys.path.insert(0, str(HERE))
        from ingest import make_table

        source = tmp / "events.parquet"
        pq.write_table(make_table(clients, 100), source)
    spec = IngestSpec(id_col="client_id", time_col="event_time", cat_cols=("mcc", "channel"),
                      num_cols=("amount", "balance"), max_len=1000, min_len=2, val_fraction=0.0)
    ingest(source, tmp / "prepared", spec)
    emit("workload", source="make_synthetic_events.py" if generator else "benchmarks/ingest.py make_table",
         clients=clients)
    return tmp / "prepared"


class KeepLast:
    """Reporter that keeps a copy of the last checkpoint (the MLEM figure's teacher)."""

    def __init__(self, keep: Path | None):
        self.keep, self.metrics = keep, None

    def report(self, metrics, checkpoint):
        self.metrics = metrics
        if self.keep is not None and checkpoint is not None:
            shutil.rmtree(self.keep, ignore_errors=True)
            shutil.copytree(checkpoint, self.keep)


def timed_train(figure: str, data: Path, method: str, device: str, precision: str, warmup: int, steps: int,
                batch: int = 64, keep: Path | None = None, teacher: Path | None = None, prefetch: int = 0,
                workers: int = 0, gru_fp32: bool = True, profile: bool = False, threads: int = 0,
                quiet: bool = False) -> dict:
    """Steps/s of `training.loop.train` itself: the time between the on_batch hook of step `warmup`
    and of step `warmup + steps` (the loop reads the loss every step, which waits for the device),
    all inside one epoch. `profile`: also emit the ops that took the most device (or CPU) time."""
    from mlem_ray.config import make_config
    from mlem_ray.data.prepared import EventSequences
    from mlem_ray.models.encoders import GRUEncoder
    from mlem_ray.training.loop import train

    per_epoch = len(EventSequences.open(data).indices("train")) // batch
    steps = min(steps, per_epoch - warmup - 1)

    overrides = {"data.path": str(data), "model.hidden": 256, "model.cat_emb_dim": 16, "data.batch_size": batch,
                 "data.slices": 5, "data.slice_min": 25, "data.slice_max": 100, "train.epochs": 1,
                 "train.steps_per_epoch": warmup + steps + 1, "train.device": device,
                 "train.precision": precision, "train.prefetch": prefetch, "train.loader_workers": workers,
                 "train.threads": threads}
    if teacher is not None:
        overrides["objective.teacher"] = str(teacher)
    cfg = make_config(method, overrides)
    marks: list[tuple[float, int]] = []
    rows = {"n": 0}

    def hook(epoch, step, b):
        marks.append((time.perf_counter(), rows["n"]))
        rows["n"] += len(b)
        return b

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    reporter = KeepLast(keep)
    GRUEncoder.fp32_recurrence = gru_fp32
    prof = None
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        prof = torch_profile(activities=activities)
        state = {"on": False}
        inner = hook

        def hook(epoch, step, b):  # noqa: F811 - profile only the timed steps
            if step == warmup and not state["on"]:
                prof.__enter__()
                state["on"] = True
            if step == warmup + steps and state["on"]:
                prof.__exit__(None, None, None)
                state["on"] = False
            return inner(epoch, step, b)
    try:
        train(cfg, reporter, on_batch=hook)
    finally:
        GRUEncoder.fp32_recurrence = True
    (t0, r0), (t1, r1) = marks[warmup], marks[warmup + steps]
    dt = t1 - t0
    per_client = cfg.data.slices if method == "coles" else 1
    out = {"device": device, "precision": precision, "method": method, "batch_sequences": batch,
           "prefetch": prefetch, "loader_workers": workers, "gru_fp32": gru_fp32, "timed_steps": steps, "seconds": round(dt, 3),
           "sequences_per_s": round(steps * batch / dt, 1), "rows_per_s": round((r1 - r0) / dt, 1),
           "train_loss": round(float(reporter.metrics.get("train_loss", float("nan"))), 4),
           "threads": torch.get_num_threads()}
    if method == "coles":
        out["note"] = f"sequences = clients; rows = {per_client} slices per client"
    if device == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if prof is not None:
        out["profile_top"] = top_ops(prof, device, steps)
    if not quiet:
        emit(figure, **out)
    return out


def top_ops(prof, device: str, steps: int, n: int = 12) -> list:
    """The ops (and, on a GPU, kernels) with the most self time, in ms per step."""
    rows = []
    for e in prof.key_averages():
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = getattr(e, "self_cuda_time_total", 0)
        rows.append((dev if device == "cuda" else e.self_cpu_time_total, e.key, e.count, dev, e.self_cpu_time_total))
    rows.sort(reverse=True)
    return [{"op": k[:90], "calls_per_step": round(c / steps, 1), "device_ms": round(d / 1e3 / steps, 3),
             "cpu_ms": round(cpu / 1e3 / steps, 3)} for _, k, c, d, cpu in rows[:n]]


def timed_infer(figure: str, data: Path, checkpoint: Path, device: str, precision: str, limit: int | None) -> dict:
    from mlem_ray.data.prepared import EventSequences
    from mlem_ray.evaluation.embed import embed_rows
    from mlem_ray.training.checkpoint import load_encoder

    seqs = EventSequences.open(data)
    encoder, _ = load_encoder(checkpoint, seqs.schema, device)
    rows = seqs.indices()[:limit] if limit else seqs.indices()
    embed_rows(encoder, seqs, rows[:512], 1000, device=device, precision=precision)  # warm-up (cuDNN plans)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    emb = embed_rows(encoder, seqs, rows, 1000, batch_size=256, device=device, precision=precision)
    dt = time.perf_counter() - t0
    out = {"device": device, "precision": precision, "sequences": len(rows), "seconds": round(dt, 3),
           "sequences_per_s": round(len(rows) / dt, 1), "batch": 256, "threads": torch.get_num_threads(),
           "finite": bool(torch.isfinite(torch.from_numpy(emb)).all())}
    if device == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    emit(figure, **out)
    return out


def ray_startup(data: Path) -> None:
    try:
        import ray
        import ray.train
        from ray.train.torch import TorchTrainer
    except ImportError as e:
        emit("ray_train_startup", error=f"ray is not importable here ({e}); not measured")
        return
    from mlem_ray.config import make_config

    t0 = time.perf_counter()
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    stamp = Path(tempfile.mkdtemp()) / "entered"
    cfg = make_config("coles", {"data.path": str(data), "model.hidden": 256, "data.batch_size": 64,
                                "data.slice_max": 100, "train.epochs": 1, "train.steps_per_epoch": 20,
                                "train.device": "cuda"})

    def loop(config):
        Path(config["stamp"]).write_text(repr(time.time()))
        from mlem_ray.training.ray_train import train_loop_per_worker

        train_loop_per_worker(config)

    storage = Path(tempfile.mkdtemp())
    trainer = TorchTrainer(loop, train_loop_config={"config": cfg.to_dict(), "stamp": str(stamp)},
                           scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=True),
                           torch_config=ray.train.torch.TorchConfig(backend="nccl"),
                           run_config=ray.train.RunConfig(name="startup", storage_path=str(storage)))
    wall0 = time.time()
    t1 = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t1
    entered = float(stamp.read_text())
    emit("ray_train_startup", device="cuda", ray=ray.__version__, ray_init_s=round(init_s, 2),
         fit_to_worker_s=round(entered - wall0, 2), fit_total_s=round(fit_s, 2), steps=20,
         val_loss=(result.metrics or {}).get("val_loss"))
    ray.shutdown()


def main() -> None:
    global JSON_PATH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also append the JSON lines here")
    ap.add_argument("--generator", type=Path, help="make_synthetic_events.py (default: ../shared/bench's, if found)")
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=100, help="timed GPU training steps (CPU: --cpu-steps)")
    ap.add_argument("--cpu-steps", type=int, default=10)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also profile CoLES and MLEM steps on the GPU")
    a = ap.parse_args()
    JSON_PATH = a.json
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    emit("device", card=props.name if cuda else None, gpu_mib=round(props.total_memory / 2**20) if cuda else None,
         torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
         cpu_threads=torch.get_num_threads(), cpus=os.cpu_count(),
         bf16=bool(cuda and torch.cuda.is_bf16_supported()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp, a.generator, a.clients)
        teacher = tmp / "teacher"
        gpu = "cuda" if cuda else "cpu"
        # fp32 first: its checkpoint is the MLEM teacher and the inference encoder.
        guarded("coles_train", timed_train, "coles_train", data, "coles", gpu, "fp32", 10, a.steps, keep=teacher)
        if cuda:
            for kw in ({"workers": 2}, {"prefetch": 2}, {"precision": "bf16"}, {"precision": "bf16", "gru_fp32": False},
                       {"batch": 256}, {"batch": 256, "precision": "bf16"}, {"batch": 256, "workers": 4}):
                kw = {"precision": "fp32", **kw}
                guarded("coles_train", timed_train, "coles_train", data, "coles", gpu, kw.pop("precision"), 10,
                        a.steps, **kw)
        if teacher.exists():
            guarded("mlem_train", timed_train, "mlem_train", data, "mlem", gpu, "fp32", 5, a.steps // 2, teacher=teacher)
            if cuda:
                for kw in ({"precision": "bf16"}, {"precision": "bf16", "gru_fp32": False}, {"workers": 2}):
                    kw = {"precision": "fp32", **kw}
                    guarded("mlem_train", timed_train, "mlem_train", data, "mlem", gpu, kw.pop("precision"), 5,
                            a.steps // 2, teacher=teacher, **kw)
            guarded("infer", timed_infer, "infer", data, teacher, gpu, "fp32", None)
            if cuda:
                guarded("infer", timed_infer, "infer", data, teacher, gpu, "bf16", None)
        if cuda and a.profile:  # where a step's time goes
            guarded("profile", timed_train, "profile", data, "coles", gpu, "fp32", 5, 10, profile=True)
            if teacher.exists():
                guarded("profile", timed_train, "profile", data, "mlem", gpu, "fp32", 3, 6, teacher=teacher,
                        profile=True)
                guarded("profile", timed_train, "profile", data, "mlem", gpu, "bf16", 3, 6, teacher=teacher,
                        profile=True)
        if cuda:  # the same workload on this machine's CPU, for the ratio
            guarded("coles_train", timed_train, "coles_train", data, "coles", "cpu", "fp32", 2, a.cpu_steps)
            guarded("coles_train", timed_train, "coles_train", data, "coles", "cpu", "fp32", 2, a.cpu_steps, workers=2)
            if teacher.exists():
                guarded("mlem_train", timed_train, "mlem_train", data, "mlem", "cpu", "fp32", 1, max(2, a.cpu_steps // 2),
                        teacher=teacher)
                guarded("infer", timed_infer, "infer", data, teacher, "cpu", "fp32", 2560)
        if cuda and not a.skip_ray:
            guarded("ray_train_startup", ray_startup, data)


if __name__ == "__main__":
    main()
