"""Is a validation subset of train.val_size sequences large enough to rank runs by? One run:
train two configs that a sweep would compare (CoLES, model.hidden 64 vs 128, the same steps),
then compute each one's validation loss on K disjoint random subsets of `--size` validation
sequences and on the whole validation split. Prints the spread between subsets (std, range) next
to the gap between the configs, and on how many subsets the two configs rank as on the whole split.

    python benchmarks/val_subset.py /work/scale/prepared_200000 [--size 4096] [--subsets 4] [--steps 100]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    from mlem_ray.config import make_config
    from mlem_ray.training import LocalReporter, train
    from mlem_ray.training.loop import Recipe, Runtime, _batches, preflight

    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--subsets", type=int, default=4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--no-whole", action="store_true",
                   help="skip the whole split (slow at 200k on 2 cores): the gap is then the mean paired gap")
    p.add_argument("--configs", default="model.hidden=64;model.hidden=128",
                   help="two ';'-separated sets of k=v,k=v overrides")
    args = p.parse_args()
    configs = [dict(kv.split("=") for kv in c.split(",")) for c in args.configs.split(";")]
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, over in enumerate(configs):
            over = {k: int(v) if v.isdigit() else float(v) for k, v in over.items()}
            cfg = make_config("coles", {"data.path": args.data, "train.epochs": 1, "train.val_size": args.size,
                                        "train.steps_per_epoch": args.steps, **over})
            run = Path(tmp) / f"r{i}"
            train(cfg, LocalReporter(run, stream=None))
            # whole-split validation and disjoint random subsets, through the loop's own validate()
            full_cfg = cfg.replace(**{"train.val_size": 0})
            recipe = Recipe(full_cfg, Runtime(), preflight(full_cfg))
            recipe.resume(run / "last")
            everything = recipe.val_rows
            order = np.random.default_rng(123).permutation(everything)
            sets = [np.sort(order[j * args.size:(j + 1) * args.size]) for j in range(args.subsets)]
            values = [float("nan") if args.no_whole else recipe.validate()["val_loss"]]
            for rows in sets:
                recipe.val_loader, _, recipe.val_collate = _batches(recipe.seqs, rows, recipe.kind, full_cfg,
                                                                    recipe.runtime, False, recipe.max_len)
                values.append(recipe.validate()["val_loss"])
            losses[str(over)] = values
    names = list(losses)
    a, b = (np.array(losses[n]) for n in names)
    print(f"validation split: {len(everything)} sequences; {args.subsets} disjoint subsets of {args.size}")
    for n in names:
        v = np.array(losses[n])
        print(f"{n}: whole {v[0]:.4f}; subsets {', '.join(f'{x:.4f}' for x in v[1:])} "
              f"(std {v[1:].std(ddof=1):.4f}, range {np.ptp(v[1:]):.4f})")
    gap = float(np.mean(b[1:] - a[1:])) if args.no_whole else b[0] - a[0]
    agree = int(np.sum(np.sign(b[1:] - a[1:]) == np.sign(gap)))
    print(f"gap between the configs ({'mean over subsets' if args.no_whole else 'whole split'}): {gap:+.4f}; "
          f"subset-to-subset std / |gap|: {max(a[1:].std(ddof=1), b[1:].std(ddof=1)) / abs(gap):.3f}; "
          f"same order on {agree}/{args.subsets} subsets; paired gap std {np.std(b[1:] - a[1:], ddof=1):.4f}")


if __name__ == "__main__":
    main()
