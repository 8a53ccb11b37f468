"""Measuring a trial before packing trials on a GPU: its peak GPU memory and its training
throughput, alone and with K copies side by side on one GPU (sweep/resources.py decides K from
these figures; benchmarks/gpu_sweep.py reports them).

- `largest_config(stage, fixed)`: the stage's config with every size-setting parameter (model.*,
  data.*) at its high corner and the rest at the low one: the hungriest trial the stage can
  sample, at a learning rate that stays finite for a few steps.
- `measure(cfg, warmup, steps)`: in this process, `warmup` steps of the real training loop and
  `steps` timed ones; then the loop is stopped (no validation, no checkpoint). Peak memory is
  torch's reserved peak (what the allocator holds, above what tensors use) plus CUDA_CONTEXT_BYTES
  for the process's CUDA context and library workspaces, which torch does not count.
- `run_side_by_side(cfg, k, ...)`: K processes of `measure` on the one visible GPU, their timed
  windows started together (a file barrier); aggregate throughput = every process's timed
  sequences / (last end - first start).
- `probe_on_gpu(cfg, ks)`: the same from the driver, in a Ray task holding one whole GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The CUDA context, cuBLAS/cuDNN handles and workspaces of one process: about 0.5 GiB on
# recent drivers; torch's allocator statistics do not include it.
CUDA_CONTEXT_BYTES = 512 * 2 ** 20
_SIZE_SECTIONS = ("model.", "data.")


class _Stop(Exception):
    """Raised from the loop's batch hook once the timed steps are done."""


def largest_config(stage, fixed: dict) -> dict:
    """The flat overrides of the stage's hungriest trial (see the module docstring)."""
    sampled = {key: spec.corner(high=key.startswith(_SIZE_SECTIONS)) for key, spec in stage.params.items()}
    return stage.overrides(sampled, fixed)


def _config(overrides: dict, method: str, warmup: int, steps: int):
    from ..config import make_config

    flat = {**overrides, "train.epochs": 1, "train.steps_per_epoch": warmup + steps + 2, "train.selection": "none",
            "train.budget_steps": 0, "train.budget_cpu_s": 0.0}
    return make_config(method, flat)


def measure(overrides: dict, method: str, warmup: int = 3, steps: int = 10, barrier: dict | None = None) -> dict:
    """Run the loop for warmup + steps steps here and report throughput and peak GPU memory.
    `barrier`: {"dir", "parties", "index"}: wait after the warm-up until every party is ready."""
    import torch

    from ..training.loop import Runtime, resolve_device, train

    cfg = _config(overrides, method, warmup, steps)
    device = resolve_device(cfg.train.device)
    cuda = device.type == "cuda"
    marks: dict = {}
    seen = {"n": 0}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def hook(epoch, step, batch):
        if step == warmup:
            sync()
            if barrier:
                _wait(barrier)
            marks["t0"], marks["wall0"], seen["n"] = time.perf_counter(), time.time(), 0
        if step == warmup + steps:
            sync()
            marks["t1"], marks["wall1"] = time.perf_counter(), time.time()
            raise _Stop
        seen["n"] += len(batch) if step >= warmup else 0
        return batch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        train(cfg, _Discard(), Runtime(device=device), on_batch=hook)
    except _Stop:
        pass
    if "t1" not in marks:
        raise RuntimeError(f"the probe needs {warmup + steps + 1} training steps; the data set gives fewer per epoch")
    seconds = marks["t1"] - marks["t0"]
    out = {"device": device.type, "method": method, "batch_sequences": cfg.data.batch_size, "timed_steps": steps,
           "seconds": seconds, "sequences_per_s": seen["n"] / seconds, "sequences": seen["n"],
           "start": marks["wall0"], "end": marks["wall1"], "peak_bytes": 0.0, "gpu_total_bytes": 0.0}
    if cuda:
        out.update(peak_allocated_bytes=float(torch.cuda.max_memory_allocated()),
                   peak_bytes=float(torch.cuda.max_memory_reserved() + CUDA_CONTEXT_BYTES),
                   gpu_total_bytes=float(torch.cuda.get_device_properties(device).total_memory))
    return out


class _Discard:
    def report(self, metrics, checkpoint):
        pass


def _wait(barrier: dict, timeout_s: float = 300.0) -> None:
    where = Path(barrier["dir"])
    (where / f"ready-{barrier['index']}").touch()
    deadline = time.time() + timeout_s
    while len(list(where.glob("ready-*"))) < barrier["parties"]:
        if time.time() > deadline:
            raise RuntimeError("the side-by-side probe's other processes never got ready")
        time.sleep(0.005)


def run_side_by_side(overrides: dict, method: str, k: int, warmup: int = 3, steps: int = 10,
                     timeout_s: float = 600.0) -> dict:
    """K probe processes at once on the visible device. -> aggregate figures and each process's."""
    with tempfile.TemporaryDirectory(prefix="mlem_ray_probe_") as tmp:
        spec = Path(tmp) / "probe.json"
        spec.write_text(json.dumps({"overrides": overrides, "method": method, "warmup": warmup, "steps": steps}))
        procs = [subprocess.Popen([sys.executable, "-m", "mlem_ray.sweep.probe", str(spec), str(k), str(i)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
                 for i in range(k)]
        results, errors = [], []
        for p in procs:
            try:
                stdout, stderr = p.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, stderr = p.communicate()
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            if p.returncode == 0 and lines:
                results.append(json.loads(lines[-1]))
            else:
                errors.append((stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1])
    if errors:
        raise RuntimeError(f"a probe process failed: {errors[0]}")
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"k": k, "aggregate_sequences_per_s": sum(r["sequences"] for r in results) / span,
            "per_trial_sequences_per_s": [r["sequences_per_s"] for r in results],
            "peak_bytes": max(r["peak_bytes"] for r in results),
            "gpu_total_bytes": max(r["gpu_total_bytes"] for r in results), "device": results[0]["device"]}


def probe_on_gpu(overrides: dict, method: str, ks, warmup: int = 3, steps: int = 10, cpus: float = 1.0,
                 stop_gain: float | None = None, gpus: float = 1.0, timeout_s: float = 600.0) -> dict[int, dict]:
    """`run_side_by_side` for each K in `ks` (in order) in a Ray task that holds `gpus` of one GPU
    (all of it, or what the evaluation actors leave: the trials' share). `stop_gain`: stop once
    doubling K gained less than that factor (auto's search)."""
    import ray

    from ..errors import ResourceError

    @ray.remote(num_gpus=gpus, num_cpus=cpus)
    def on_one_gpu(overrides, method, ks, warmup, steps, stop_gain):
        found, last = {}, None
        for k in ks:
            found[k] = run_side_by_side(overrides, method, k, warmup, steps)
            rate = found[k]["aggregate_sequences_per_s"]
            if stop_gain and last and rate < stop_gain * last:
                break
            last = rate
        return found

    ref = on_one_gpu.remote(overrides, method, list(ks), warmup, steps, stop_gain)
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise ResourceError(f"the GPU memory probe got no {gpus:g} of a GPU within {timeout_s:.0f} s (the evaluation "
                            "actors' --eval-gpus shares may fill every GPU); use a smaller --eval-gpus") from None


def _main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    parties, index = int(argv[1]), int(argv[2])
    barrier = {"dir": str(Path(argv[0]).parent), "parties": parties, "index": index} if parties > 1 else None
    print(json.dumps(measure(spec["overrides"], spec["method"], spec["warmup"], spec["steps"], barrier=barrier)),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
