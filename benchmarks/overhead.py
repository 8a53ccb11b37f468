"""Cost of the training loop over a bare PyTorch loop: one epoch each, same model, same batches.

    python benchmarks/overhead.py [--sequences 3000] [--method coles] [--repeats 3]

The bare loop iterates the same DataLoader (sampler + collate) and does forward, backward, gradient
clipping and an AdamW step (as the loop). `train()` adds what it adds: the finite-loss check,
metric accumulation, the LR schedule, and the end-of-epoch checkpoint. The data set has no
validation split, so both runs do the same work otherwise. Runs alternate; the best and the median
of --repeats are compared.
Target: the loop costs at most 10 % more.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mlem_ray.config import make_config
from mlem_ray.data import EventSequences, pendulum, prepare, write_prepared
from mlem_ray.training import train
from mlem_ray.training.loop import Runtime, _batches, build_training_objective


class Silent:
    def report(self, metrics, checkpoint):
        pass


def bare_epoch(cfg) -> float:
    torch.manual_seed(cfg.train.seed)
    seqs = EventSequences.open(cfg.data.path)
    objective = build_training_objective(cfg, seqs, seqs.schema.max_len, torch.device("cpu"))
    loader, sampler, collate = _batches(seqs, seqs.indices("train"), objective.batch_kind, cfg, Runtime(), True,
                                        seqs.schema.max_len)
    opt = torch.optim.AdamW(objective.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    t = time.perf_counter()
    sampler.set_epoch(0)
    objective.train()
    for batch in loader:
        loss = objective(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.optim.clip_grad)
        opt.step()
    return time.perf_counter() - t


def loop_epoch(cfg) -> float:
    t = time.perf_counter()
    train(cfg, Silent())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=3000)
    ap.add_argument("--method", default="coles")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "p"
        events, targets = pendulum.generate(args.sequences, seed=0)
        spec = dataclasses.replace(pendulum.INGEST_SPEC, val_fraction=0.0)
        write_prepared(data, *prepare(events, spec, targets))
        cfg = make_config(args.method, {"data.path": str(data), "model.hidden": args.hidden, "train.epochs": 1,
                                        "data.slice_min": 15, "data.slice_max": 60})
        # the loop's model build (and load of data) happens inside train(); build it once first so
        # both sides start warm
        bare_epoch(cfg)
        bare, loop = [], []
        for _ in range(args.repeats):
            bare.append(bare_epoch(cfg))
            t = loop_epoch(cfg)
            loop.append(t)
        b, l_ = min(bare), min(loop)
        mb, ml = statistics.median(bare), statistics.median(loop)
        steps = len(EventSequences.open(data).indices("train")) // cfg.data.batch_size + 1
        print(f"{args.method}, {args.sequences} sequences, hidden {args.hidden}, {steps} steps per epoch, "
              f"torch threads {torch.get_num_threads()}")
        print(f"bare PyTorch epoch   {b:.2f} s   (runs: {', '.join(f'{x:.2f}' for x in bare)})")
        print(f"training loop epoch  {l_:.2f} s   (runs: {', '.join(f'{x:.2f}' for x in loop)}; includes model build "
              f"and the checkpoint)")
        print(f"loop / bare          {l_ / b:.3f} best of {args.repeats}, {ml / mb:.3f} median   (target <= 1.10)")


if __name__ == "__main__":
    main()
