"""GPU sweep figures (issue: GPU sweeps that fill the GPU), measured side by side in one run.
Run through benchmarks/gpu_sweep.sh (bounded to 5 minutes); one JSON line per figure, appended
to --json. `--smoke`: a tiny CPU run of every figure (on a fake Ray GPU for the stage), to check
the script before a GPU session; its numbers mean nothing.

Workload (docs/design.md#benchmark-workload's standard one, smaller): CoLES, GRU 256, mcc embedding 16, channel 4,
batch 64 clients x 5 slices of 25..100 events, on make_synthetic_events.py's table (or
benchmarks/ingest.py's same-shaped one).
- packing: aggregate training throughput of K = 1, 2, 4, 8 trial processes side by side on one
  GPU (sweep/probe.py run_side_by_side: the real loop, timed windows started together), with
  each K's ratio to K = 1 and the peak memory of one trial (reserved + CUDA context).
  Target on an H200: K = 8 at least 4x K = 1.
- stage: wall time of a 16-trial sweep stage (`mlem-ray sweep`'s own path: run_sweep with
  --trials-per-gpu 1, then 8; scoring by the evaluation actors included) and the ratio.
- sync: CoLES and generative steps run under torch.cuda.set_sync_debug_mode("warn"), between
  the window's reads: every synchronizing CUDA call (a device-to-host read, a blocking copy, a
  data-dependent shape) is a warning, counted and located. Target: 0.
- step: one trial's throughput with the per-step host sync and without it (through the loop's
  `train.sync_every` knob where this build has one), and compiled (`train.compile` where it has
  one, measured last: its compilation is the slowest part). Target on an H200: one trial at
  batch 64 at least 2x 3,948 clients/s (the loop that synced every step).
- targets: the ratios against the two targets, in one line, once packing and the eager step
  are measured.
The figures run in the order sync, step (eager), packing, targets, stage, step (compiled), so a
run stopped at the 5-minute bound still has the cheap ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gpu_check import emit, guarded, make_data  # noqa: E402  (same workload and output conventions)
import gpu_check  # noqa: E402

WORKLOAD = {"model.hidden": 256, "model.cat_emb_dim": 16, "data.batch_size": 64, "data.slices": 5,
            "data.slice_min": 25, "data.slice_max": 100}
SMOKE = {"model.hidden": 16, "model.cat_emb_dim": 4, "data.batch_size": 8, "data.slices": 2,
         "data.slice_min": 5, "data.slice_max": 20}


def train_fields() -> dict:
    from mlem_ray.config import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


TARGET_PACKING = 4.0  # K = 8 over K = 1, aggregate clients/s
TARGET_STEP = 2.0  # one trial at batch 64 over the loop that synced every step
BEFORE_CLIENTS_PER_S = 3948.0  # that loop's CoLES batch-64 figure on an H200 (README, "GPU")


def sync_check(data: Path, base: dict, device: str, method: str, warmup: int, steps: int) -> dict:
    """`steps` training steps after `warmup` under torch.cuda.set_sync_debug_mode("warn"), with
    train.sync_every above the steps (no window read among them). -> {"syncs", "where"}."""
    import warnings

    import torch

    from mlem_ray.config import make_config
    from mlem_ray.training.loop import Runtime, train

    cfg = make_config(method, {**base, "data.path": str(data), "train.device": device, "train.epochs": 1,
                               "train.steps_per_epoch": warmup + steps + 2, "train.selection": "none",
                               "train.sync_every": warmup + steps + 2})
    cuda = device == "cuda"

    class Done(Exception):
        pass

    def hook(epoch, step, batch):
        if step == warmup and cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        if step == warmup + steps:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
            raise Done
        return batch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train(cfg, _Discard(), Runtime(device=torch.device(device)), on_batch=hook)
        except Done:
            pass
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
    emit("sync", method=method, device=device, steps=steps, syncs=len(syncs), where=where[:10], target=0,
         met=len(syncs) == 0 if cuda else None,
         note=None if cuda else "no CUDA device: torch's sync debug mode checks nothing here")
    return {"syncs": len(syncs), "where": where}


class _Discard:
    def report(self, metrics, checkpoint):
        pass


def packing(data: Path, base: dict, ks: list[int], warmup: int, steps: int) -> dict:
    """-> {K: aggregate clients/s}."""
    from mlem_ray.sweep.probe import run_side_by_side

    first, found = None, {}
    for k in ks:
        r = run_side_by_side({**base, "data.path": str(data)}, "coles", k, warmup, steps)
        first = first or r["aggregate_sequences_per_s"]
        emit("packing", k=k, device=r["device"], aggregate_clients_per_s=round(r["aggregate_sequences_per_s"], 1),
             per_trial_clients_per_s=[round(v, 1) for v in r["per_trial_sequences_per_s"]],
             ratio_to_k1=round(r["aggregate_sequences_per_s"] / first, 2),
             peak_gpu_mib_per_trial=round(r["peak_bytes"] / 2 ** 20, 1),
             gpu_total_gib=round(r["gpu_total_bytes"] / 2 ** 30, 1), timed_steps=steps)
        found[k] = r["aggregate_sequences_per_s"]
    return found


def stage(data: Path, base: dict, ks: list[int], trials: int, steps_per_epoch: int, device: str,
          tmp: Path, eval_actors: int) -> None:
    """A one-stage sweep of `trials` CoLES trials, through run_sweep, at each K, with the same
    number of evaluation actors at every K (the default would give K = 1 more of them). The
    workload has no targets, so each actor's scoring is the quick failed row of an unlabelled
    set: the wall time is the trials' (and the probe's)."""
    import yaml

    from mlem_ray.sweep.pipeline import SweepJob, run_sweep

    params = {**{k: v for k, v in base.items()}, "optim.lr": {"type": "log_float", "low": 1e-3, "high": 3e-3},
              "train.steps_per_epoch": steps_per_epoch}
    if device == "cpu":
        params["train.device"] = "cpu"  # the smoke run: Ray packs trials on a fake GPU, they train on CPU
    doc = {"method": "coles", "sweep": {"trials": trials, "scheduler": "none", "epochs": 1, "finalists": 1,
                                        "selection": "val_loss", "search": "random"}, "params": params}
    space = tmp / "stage.yaml"
    space.write_text(yaml.safe_dump(doc))
    first = None
    for k in ks:
        out = tmp / f"stage_k{k}"
        t0 = time.perf_counter()
        run_sweep(SweepJob(out=str(out), data=str(data), space=str(space), folds=2, trials_per_gpu=str(k),
                           eval_actors=eval_actors))
        wall = time.perf_counter() - t0
        first = first or wall
        from mlem_ray.evaluation import leaderboard

        emit("stage", k=k, trials=trials, wall_s=round(wall, 1), speedup_vs_k1=round(first / wall, 2),
             rows=len(leaderboard.read(out)), steps_per_trial=steps_per_epoch)


def step_variants(steps: int, compiled: bool) -> list[tuple[str, dict]]:
    """The eager variants (with and without the per-step sync), or the compiled ones."""
    fields = train_fields()
    sync = next((n for n in fields if n.startswith("sync")), None)
    eager = [("as built", {})]
    if sync:
        eager = [(f"{sync}=1 (a host sync every step)", {f"train.{sync}": 1}),
                 (f"{sync}={max(steps, 50)} (no per-step sync)", {f"train.{sync}": max(steps, 50)})]
    elif not compiled:
        emit("step", note="this build has no train.sync_every-style knob: its loop syncs every step (the "
                          "finiteness check and metric sums read the device); only that is measured")
    if not compiled:
        return eager
    if "compile" not in fields:
        emit("step", note="this build has no train.compile knob: no compiled step to measure")
        return []
    no_sync = dict(eager[-1][1])  # compiled steps are measured without the per-step sync
    return [(f"compile={mode}", {**no_sync, "train.compile": mode}) for mode in ("inductor",)]


def step(data: Path, base: dict, device: str, warmup: int, steps: int, compiled: bool = False,
         baseline: float | None = None) -> dict:
    """-> {variant: clients/s}. `baseline`: the figure the ratios are taken to (else the first)."""
    from mlem_ray.sweep.probe import measure

    found = {}
    for label, extra in step_variants(steps, compiled):
        try:
            r = measure({**base, "data.path": str(data), "train.device": device, **extra}, "coles", warmup, steps)
        except Exception as e:  # an unknown compile mode of this build, a compile failure: say so, go on
            emit("step", variant=label, error=f"{type(e).__name__}: {e}"[:300])
            continue
        baseline = baseline or r["sequences_per_s"]
        found[label] = r["sequences_per_s"]
        emit("step", variant=label, device=r["device"], clients_per_s=round(r["sequences_per_s"], 1),
             ratio_to_synced=round(r["sequences_per_s"] / baseline, 2), batch=base["data.batch_size"],
             timed_steps=steps, peak_gpu_mib=round(r["peak_bytes"] / 2 ** 20, 1),
             vs_3948_clients_per_s=round(r["sequences_per_s"] / BEFORE_CLIENTS_PER_S, 2) if device == "cuda" else None)
    return found


def targets(packed: dict | None, steps: dict | None, device: str, smoke: bool) -> None:
    """One line: each target's measured ratio and whether it is met (None: not measured here)."""
    packed, steps = packed or {}, steps or {}
    k8 = packed[8] / packed[1] if 8 in packed and 1 in packed else None
    unsynced = [v for label, v in steps.items() if "no per-step sync" in label or label.startswith("compile")]
    best = max(unsynced) / BEFORE_CLIENTS_PER_S if unsynced and device == "cuda" else None
    emit("targets", device=device, smoke=smoke,
         packing_k8_over_k1=round(k8, 2) if k8 else None, packing_target=f">= {TARGET_PACKING:g}",
         packing_met=(k8 >= TARGET_PACKING) if k8 and device == "cuda" else None,
         step_over_3948=round(best, 2) if best else None, step_target=f">= {TARGET_STEP:g}",
         step_met=(best >= TARGET_STEP) if best else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="append each figure's JSON line here")
    p.add_argument("--smoke", action="store_true", help="tiny, on CPU: checks the script, measures nothing")
    p.add_argument("--clients", type=int, default=0, help="clients in the workload (default 10000; smoke 300)")
    p.add_argument("--ks", default="", help="K values for the packing figure (default 1,2,4,8; smoke 1,2)")
    p.add_argument("--stage-trials", type=int, default=0, help="trials of the stage figure (default 16; smoke 4)")
    p.add_argument("--only", default="sync,step,packing,stage,compiled", help="figures to run (comma-separated)")
    args = p.parse_args(argv)
    gpu_check.JSON_PATH = args.json
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        emit("gpu_sweep", error="no GPU visible to torch; run with --smoke on CPU")
        return 1
    smoke = args.smoke
    base = dict(SMOKE if smoke else WORKLOAD)
    base["train.device"] = device
    ks = [int(k) for k in (args.ks or ("1,2" if smoke else "1,2,4,8")).split(",")]
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="mlem_ray_gpu_sweep_") as tmp:
        tmp = Path(tmp)
        data = make_data(tmp, None, args.clients or (300 if smoke else 10000))
        warmup, steps = (2, 4) if smoke else (10, 60)
        if "sync" in only:
            for method in ("coles", "generative"):
                guarded("sync", sync_check, data, base, device, method, warmup, 3 if smoke else 20)
        stepped = guarded("step", step, data, base, device, warmup, steps) if "step" in only else None
        packed = guarded("packing", packing, data, base, ks, warmup, steps) if "packing" in only else None
        targets(packed, stepped, device, smoke)
        if "stage" in only:
            import ray

            # smoke: one fake GPU, so Ray packs the trials as it would on a real one
            ray.init(num_gpus=1 if smoke else None, include_dashboard=False, namespace="mlem_ray",
                     num_cpus=None)
            try:
                guarded("stage", stage, data, base, [1, 2] if smoke else [1, 8], args.stage_trials or (4 if smoke else 16),
                        3 if smoke else 30, device, tmp, 1 if smoke else 4)
            finally:
                ray.shutdown()
        if "compiled" in only:
            synced = next(iter((stepped or {}).values()), None)
            on = base
            if smoke:
                # inductor's C++ code generation takes minutes on a small CPU: its graph capture
                # only, of a transformer encoder (the CPU GRU's hand-written recurrence is traced
                # anew for every batch's lengths; a GPU runs cuDNN's GRU)
                from mlem_ray.training import loop

                loop.COMPILE_BACKENDS["inductor"] = "aot_eager"
                on = {**base, "model.encoder": "transformer", "model.heads": 2}
            compiled = guarded("step", step, data, on, device, warmup, steps, True, synced)
            if compiled:
                targets(packed, {**(stepped or {}), **compiled}, device, smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
