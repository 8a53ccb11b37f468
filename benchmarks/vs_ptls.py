"""Side by side with pytorch-lifestream (ptls) 0.7.0 in one run, on one generated table: ingest,
CoLES training and inference, and the three ratios. No figure is a constant from elsewhere.

    python benchmarks/vs_ptls.py [--install] [--ptls-venv /tmp/ptlsvenv] [--bench-dir ../shared/bench]
                                 [--steps 30] [--repeats 3] [--json FILE]

ptls runs in its own virtual environment (`--install` builds it with the recipe of
`../shared/bench/ptls_anchor.sh`: torch 2.13 CPU, pytorch-lifestream 0.7.0, pyarrow<21, distributed)
through `../shared/bench/ptls_bench.py`; this project runs in this interpreter. The two sides take
turns stage by stage, so both see the same load on a shared machine, and every timed window says
how many cores other processes used meanwhile (other_cores; ~0 on a quiet machine).

Workload (docs/design.md#benchmark-workload): make_synthetic_events.py --clients 10000 --mean-events 100 --seed 0;
2 torch threads on both sides.
- ingest: ptls PandasDataPreprocessor.fit_transform vs `mlem_ray.data.ingest.ingest` (read,
  validate, sort, encode, split, write), each in a fresh process; median events/s; our peak RSS
  increase over the table's Arrow size.
- CoLES training: GRU 256, mcc embedding 16, batch 64 clients x 5 slices of 25..100 events,
  margin loss with 5 hard negatives; ptls: its plain-PyTorch loop with Adam; ours: the product's
  own loop (`training.loop.train`: AdamW, clipping, a finiteness check every step). clients/s over
  `--steps` steps after a warm-up.
- inference: every client's last 1000 events, batch 256; sequences/s, median of `--repeats`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = {"ingest": 20.0, "train": 2.0, "infer": 5.0}
THREADS = 2


class Other:
    """Cores used by other processes during a window: busy jiffies minus this process tree's CPU."""

    def __init__(self):
        self.wall, self.busy, self.own = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def cores(self):
        wall = time.perf_counter() - self.wall
        return round(max(0.0, (self._busy() - self.busy) - (self._own() - self.own)) / wall, 2)


def install(venv: Path) -> None:
    """The recipe of ptls_anchor.sh (its comments say why each pin is there)."""
    py = venv / "bin" / "python"
    if py.exists():
        return
    print(f"building the ptls venv in {venv} (a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["pytorch-lifestream==0.7.0"], check=True)
    dask = subprocess.run([str(py), "-c", "import dask; print(dask.__version__)"], check=True,
                          capture_output=True, text=True).stdout.strip()
    subprocess.run(pip + ["pyarrow<21", f"distributed=={dask}"], check=True)


def ptls_stage(venv: Path, bench: Path, data: Path, stage: str, args: list[str]) -> dict:
    out = subprocess.run([str(venv / "bin" / "python"), str(bench / "ptls_bench.py"), "--data", str(data),
                          "--stage", stage, *args], check=True, capture_output=True, text=True)
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def our_ingest(events: Path, work: Path, repeats: int) -> dict:
    sys.path.insert(0, str(HERE))
    import pyarrow.parquet as pq
    from ingest import CHILD

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs, others = [], []
    for _ in range(repeats):
        mon = Other()
        out = subprocess.run([sys.executable, "-c", CHILD, str(events), str(work / "prepared_ingest")],
                             check=True, capture_output=True, text=True, env=env)
        others.append(mon.cores())
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = pq.read_table(events).nbytes
    med = float(np.median([r["seconds"] for r in runs]))
    events_n = runs[0]["events"]
    peak = (max(r["peak_kb"] for r in runs) - min(r["base_kb"] for r in runs)) * 1024
    return {"stage": "ingest", "events": events_n, "times_s": [round(r["seconds"], 3) for r in runs],
            "events_per_s": round(events_n / med), "peak_over_table": round(peak / table, 2),
            "table_mib": round(table / 2**20, 1), "other_cores": others}


def our_train(prepared: Path, warmup: int, steps: int, keep: Path) -> dict:
    sys.path.insert(0, str(HERE))
    import gpu_check

    mon = Other()
    res = gpu_check.timed_train("coles_train", prepared, "coles", "cpu", "fp32", warmup, steps, keep=keep,
                                threads=THREADS, quiet=True)
    return {"stage": "train", "clients_per_s": res["sequences_per_s"], "timed_steps": res["timed_steps"],
            "seconds": res["seconds"], "other_cores": mon.cores()}


def our_infer(prepared: Path, checkpoint: Path, repeats: int) -> dict:
    import torch

    from mlem_ray.data.prepared import EventSequences
    from mlem_ray.evaluation.embed import embed_rows
    from mlem_ray.training.checkpoint import load_encoder

    torch.set_num_threads(THREADS)
    seqs = EventSequences.open(prepared)
    encoder, _ = load_encoder(checkpoint, seqs.schema, "cpu")
    rows = seqs.indices()
    times, others = [], []
    for _ in range(repeats):
        mon = Other()
        t0 = time.perf_counter()
        embed_rows(encoder, seqs, rows, 1000, batch_size=256)
        times.append(time.perf_counter() - t0)
        others.append(mon.cores())
    med = float(np.median(times))
    return {"stage": "infer", "sequences": len(rows), "times_s": [round(t, 3) for t in times],
            "seqs_per_s": round(len(rows) / med, 1), "other_cores": others}


def prepare_ours(events: Path, work: Path) -> Path:
    from mlem_ray.data.ingest import IngestSpec, ingest

    spec = IngestSpec(id_col="client_id", time_col="event_time", cat_cols=("mcc", "channel"),
                      num_cols=("amount", "balance"), max_len=1000, min_len=2, val_fraction=0.0)
    ingest(events, work / "prepared", spec)
    return work / "prepared"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptls-venv", type=Path, default=Path(os.environ.get("PTLS_VENV", "/tmp/ptlsvenv")))
    ap.add_argument("--bench-dir", type=Path, default=ROOT.parent / "shared" / "bench",
                    help="folder with ptls_bench.py and make_synthetic_events.py")
    ap.add_argument("--install", action="store_true", help="build the ptls venv first if it is missing")
    ap.add_argument("--work", type=Path, help="keep the table and outputs here (default: a temp dir)")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per side")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="ingest and inference repeats (median)")
    ap.add_argument("--json", type=Path, help="also write all results here")
    a = ap.parse_args()
    bench = a.bench_dir
    if not (bench / "ptls_bench.py").exists() or not (bench / "make_synthetic_events.py").exists():
        print(f"error: {bench} lacks ptls_bench.py / make_synthetic_events.py; pass --bench-dir", file=sys.stderr)
        return 2
    if a.install:
        install(a.ptls_venv)
    if not (a.ptls_venv / "bin" / "python").exists():
        print(f"error: no ptls venv at {a.ptls_venv}; pass --install to build it or --ptls-venv", file=sys.stderr)
        return 2
    work = a.work or Path(tempfile.mkdtemp(prefix="vs_ptls_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "synth_1m"
    if not (data / "events.parquet").exists():
        subprocess.run([sys.executable, str(bench / "make_synthetic_events.py"), "--clients", "10000",
                        "--mean-events", "100", "--seed", "0", "--out", str(data)], check=True, capture_output=True)
    events = data / "events.parquet"
    load0 = os.getloadavg()
    res: dict = {"ptls": {}, "ours": {}, "load_avg_start": [round(x, 2) for x in load0]}
    steps = ["--warmup", str(a.warmup), "--steps", str(a.steps), "--repeats", "1"]

    def show(side, r):
        res[side][r["stage"]] = r
        print(f"{side:>5} {json.dumps(r)}", flush=True)

    show("ptls", ptls_stage(a.ptls_venv, bench, data, "prep", ["--repeats", str(a.repeats)]))
    show("ours", our_ingest(events, work, a.repeats))
    prepared = prepare_ours(events, work) if not (work / "prepared" / "schema.json").exists() else work / "prepared"
    show("ptls", ptls_stage(a.ptls_venv, bench, data, "train", steps))
    ckpt_dir = work / "ours_encoder"  # the trained encoder embeds, as ptls's does
    show("ours", our_train(prepared, a.warmup, a.steps, ckpt_dir))
    show("ptls", ptls_stage(a.ptls_venv, bench, data, "infer", ["--repeats", str(a.repeats)]))
    show("ours", our_infer(prepared, ckpt_dir, a.repeats))
    res["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    p, o = res["ptls"], res["ours"]
    rows = [("ingest, events/s", p["prep"]["events_per_s"], o["ingest"]["events_per_s"], "ingest"),
            ("CoLES training, clients/s", p["train"]["median"]["clients_per_s"], o["train"]["clients_per_s"], "train"),
            ("inference, sequences/s", p["infer"]["seqs_per_s"], o["infer"]["seqs_per_s"], "infer")]
    print(f"\n{'':<28}{'ptls 0.7.0':>12}{'mlem_ray':>12}{'ratio':>8}{'target':>8}")
    res["ratios"] = {}
    for name, theirs, ours, key in rows:
        res["ratios"][key] = round(ours / theirs, 2)
        print(f"{name:<28}{theirs:>12,.1f}{ours:>12,.1f}{ours / theirs:>7.2f}x{'>= ' + str(TARGETS[key]):>8}")
    print(f"ingest peak memory: {o['ingest']['peak_over_table']:.2f}x the table (target < 3x)")
    print(f"load average {res['load_avg_start']} -> {res['load_avg_end']} on {os.cpu_count()} cores; other_cores per "
          f"window: ptls train {p['train']['median']['other_cores']}, ours train {o['train']['other_cores']}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
