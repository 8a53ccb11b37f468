"""The leaderboard file of a sweep: its name, its columns, reading it, appending a row atomically,
and choosing the best row. The evaluation actor writes it; the pipeline, the report and the
benchmarks read it through this module only. The sweep dir is a local path or an object-store
URI: all I/O goes through mlem_ray/storage.py.

Several evaluation actors append at once (one sweep, a pool of actors), on a local disk or in a
bucket, with no lock: each row is first written as its own object, `leaderboard.rows/<trial>.json`
(one atomic write: a temp file renamed locally, one PUT on object storage), named by its trial, so
a trial has one row whoever wrote it and in whatever order (an errored row is replaced by
overwriting it). `leaderboard.parquet` is a snapshot of all rows, rewritten after every row and
once more by the driver when a stage's scoring is done; two actors rewriting it at once may leave
it a row behind until the next rewrite, never with a row lost for `read`, which merges the
snapshot with the row objects (the truth).

One row per scored trial. Columns:

  trial_id, stage, method   which trial (stage: teacher | mlem | compare_<method>)
  checkpoint                the trial's kept checkpoint (chosen by the in-trial selection score)
  params                    the swept values, JSON
  seed, reseed_of           a re-seeded copy of a finished config names the trial it repeats
  selection_metric          the in-trial score that ranked trials inside the sweep (probe_score,
  selection_mode            rankme or val_loss), its direction, and its value at the kept
  selection_value           checkpoint
  val_loss                  the kept checkpoint's validation loss (reported, never compared
                            across trials: its scale is a swept hyperparameter)
  selection_mean            with sweep.repeats: the in-trial score's mean and std over the trial's
  selection_std, repeats    seeds (selection_value is then mean - std, sweep/repeats.py), and how many
  cost_metric, cost_value   with sweep.cost: the second objective (cost_params or
                            cost_embed_s_per_1k, minimised; sweep/cost.py) at the kept checkpoint
  primary_metric            the downstream score (the tree probe's CV on the labelled training
  primary_mode              pool), its direction and value; the test set is reported beside it
  primary_value             and never used to choose
  scored_at                 unix time
  status, error             ok; failed (the scoring raised: NaN embeddings, a probe that could
                            not fit) or errored (the trial itself ended in an error), with the
                            reason in one line. Only ok rows are ranked; the report lists the rest
  <metric>                  every downstream metric of the evaluation (tree_*, linear_*, ...)
"""
from __future__ import annotations

import io
import json
import math

import pandas as pd

from .. import storage

FILE = "leaderboard.parquet"
ROWS = "leaderboard.rows"  # one JSON object per trial (see the module docstring)

# Bookkeeping columns: every other numeric column is a downstream metric.
BOOKKEEPING = ("trial_id", "stage", "method", "checkpoint", "params", "seed", "reseed_of", "selection_metric",
               "selection_mode", "selection_value", "val_loss", "primary_metric", "primary_mode", "primary_value",
               "scored_at", "status", "error", "selection_mean", "selection_std", "repeats", "cost_metric",
               "cost_value")
# Optional in-trial columns the sweep hands the actor with the selection score (None: not this trial).
SELECTION_EXTRAS = {"selection_mean": float, "selection_std": float, "repeats": float, "cost_metric": str,
                    "cost_value": float}


def selection_extras(selection: dict) -> dict:
    """The optional columns of one row: repeats' mean and std, a multi-objective stage's cost."""
    return {k: kind(selection[k]) for k, kind in SELECTION_EXTRAS.items() if k in selection}
OK, FAILED, ERRORED = "ok", "failed", "errored"


def path(sweep_dir) -> str:
    """The leaderboard's location (a path or a URI, as the sweep dir is)."""
    return storage.join(sweep_dir, FILE)


def read(sweep_dir) -> pd.DataFrame:
    """The leaderboard, or an empty frame when nothing has been scored yet: the snapshot's rows,
    each replaced by its trial's row object where one exists, plus the row objects the snapshot
    lacks, in the order they were scored."""
    p = path(sweep_dir)
    snapshot = pd.read_parquet(io.BytesIO(storage.read_bytes(p))) if storage.exists(p) else pd.DataFrame()
    rows = _row_objects(sweep_dir)
    if not rows:
        return snapshot
    fresh = pd.DataFrame(rows)
    if len(snapshot) and "trial_id" in snapshot:
        snapshot = snapshot[~snapshot["trial_id"].isin(set(fresh["trial_id"]))]
    board = pd.concat([snapshot, fresh], ignore_index=True) if len(snapshot) else fresh
    if "scored_at" in board:
        board = board.sort_values("scored_at", kind="stable", na_position="last")
    return board.reset_index(drop=True)


def _row_objects(sweep_dir) -> list[dict]:
    where = storage.join(sweep_dir, ROWS)
    names = [n for n in storage.listdir(where) if n.endswith(".json") and not n.startswith(".")]
    return [json.loads(storage.read_text(storage.join(where, n))) for n in names]


def row_location(sweep_dir, trial_id: str) -> str:
    """Where the row object of `trial_id` lives. Trial ids are file-name safe (Tune's, the tests');
    anything else is hex-encoded rather than trusted as a path."""
    text = str(trial_id)
    safe = text if text and all(c.isalnum() or c in "-_." for c in text) and not text.startswith(".") \
        else "x" + text.encode().hex()
    return storage.join(sweep_dir, ROWS, f"{safe}.json")


def read_row(sweep_dir, trial_id: str) -> dict | None:
    """The trial's row as some actor wrote it, or None (a board from before row objects: see read)."""
    where = row_location(sweep_dir, trial_id)
    return json.loads(storage.read_text(where)) if storage.exists(where) else None


def append(sweep_dir, board: pd.DataFrame, row: dict) -> pd.DataFrame:
    """Write `row` (its trial's row object, replacing an earlier one of the same trial), then the
    snapshot. -> `board` (the caller's view) with `row` in place of any row of the same trial."""
    storage.write_text(row_location(sweep_dir, row["trial_id"]), json.dumps(_plain(row), default=str))
    write_snapshot(sweep_dir)
    if len(board) and "trial_id" in board:
        board = board[board["trial_id"] != row["trial_id"]]
    return pd.concat([board, pd.DataFrame([row])], ignore_index=True) if len(board) else pd.DataFrame([row])


def write_snapshot(sweep_dir) -> pd.DataFrame:
    """Rewrite leaderboard.parquet from every row (see the module docstring). -> the board."""
    board = read(sweep_dir)
    if len(board):
        write_atomic(board, path(sweep_dir))
    return board


def _plain(row: dict) -> dict:
    """JSON-ready values (numpy scalars as Python ones; NaN stays NaN, which json reads back)."""
    out = {}
    for k, v in row.items():
        out[k] = v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v
    return out


def write_atomic(df: pd.DataFrame, target) -> None:
    """Locally a temp file renamed into place; on object storage a new object (one PUT)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    storage.write_bytes(target, buf.getvalue())


def downstream_metric(task: str) -> tuple[str, str]:
    """The metric that ranks scored checkpoints downstream: the tree probe's cross-validated score
    on the labelled training ids. The test set is reported, never used to choose (that would leak it)."""
    if task == "regression":
        return "tree_cv_mse_mean", "min"
    if task == "binary":
        return "tree_cv_roc_auc_mean", "max"
    return "tree_cv_accuracy_mean", "max"


def _records(rows) -> list[dict]:
    """Rows as dicts, only those that were scored (a board written before the status column
    existed has only scored rows)."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    return [r for r in records if is_ok(r)]


def is_ok(row: dict) -> bool:
    status = row.get("status")
    return not isinstance(status, str) or status in ("", OK)


def reason(error: BaseException | str, limit: int = 300) -> str:
    """One line saying why: the last line of a (possibly multi-line, remote) error message."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    if isinstance(error, BaseException) and not text.startswith(type(error).__name__):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:limit]


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def best(rows, by: str = "primary") -> dict | None:
    """The best row by `by` ("primary": the downstream score; "selection": the in-trial score),
    in that column's own direction; rows without a finite value, or not scored ok, are skipped; ties go to the first
    row. None when no row has a finite value."""
    value, mode = f"{by}_value", f"{by}_mode"
    scored = [r for r in _records(rows) if _finite(r.get(value))]
    if not scored:
        return None
    sign = -1.0 if scored[0].get(mode) == "max" else 1.0
    return min(scored, key=lambda r: sign * float(r[value]))


def ranked(rows, by: str = "selection") -> list[dict]:
    """Rows scored ok with a finite `by` value, best first (stable for ties)."""
    value, mode = f"{by}_value", f"{by}_mode"
    scored = [r for r in _records(rows) if _finite(r.get(value))]
    if not scored:
        return []
    sign = -1.0 if scored[0].get(mode) == "max" else 1.0
    return sorted(scored, key=lambda r: sign * float(r[value]))


def pick_teacher(rows, finalists: int) -> dict | None:
    """The MLEM teacher: among the `finalists` trials ranked best by the in-trial selection score,
    the one with the best downstream score. None when no trial was scored."""
    return best(ranked(rows, "selection")[:finalists], "primary")


# The aggregate-features baseline of the sweep's data set (evaluation/aggregates.py), scored once by
# the evaluation actor with the trials' probes. A file of its own, not a leaderboard row: it is no
# trial, and every count of trials reads the leaderboard.
BASELINE_FILE = "baseline.json"


def read_baseline(sweep_dir) -> dict | None:
    p = storage.join(sweep_dir, BASELINE_FILE)
    return json.loads(storage.read_text(p)) if storage.exists(p) else None


def write_baseline(sweep_dir, scores: dict) -> None:
    """Written whole, as the leaderboard is (storage.write_bytes: temp file + rename locally)."""
    storage.write_text(storage.join(sweep_dir, BASELINE_FILE), json.dumps(scores, sort_keys=True))
