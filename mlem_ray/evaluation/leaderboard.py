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

`Row` is the type of one row: its typed columns, the defaults a reader assumes for the ones an
older driver did not write, and `from_json` / `to_json`, which read a stored row object and give it
back byte for byte (unknown columns included). The actor writes rows through it and readers take
them through it (`read_rows`, `frame`); `read` is the raw board the snapshot is rewritten from.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, fields

import pandas as pd

from .. import storage

FILE = "leaderboard.parquet"
ROWS = "leaderboard.rows"  # one JSON object per trial (see the module docstring)

OK, FAILED, ERRORED = "ok", "failed", "errored"
_NAN = math.nan


@dataclass(frozen=True)
class Row:
    """One leaderboard row, typed, with the defaults a reader assumes for a column an older driver
    did not write (in one place: every reader goes through `from_json` or `frame`). The fields are
    the columns of the module docstring, in the order the actor writes them; `metrics` holds every
    other column as written: the downstream metrics and any column this version does not know
    (a newer driver's), so nothing is dropped when a row is read and written back."""

    trial_id: str
    stage: str = ""  # missing: the row's method (boards from before stages had one per method)
    method: str = ""
    checkpoint: str = ""
    selection_metric: str = ""
    selection_mode: str = ""
    selection_value: float = _NAN
    val_loss: float = _NAN
    params: str = "{}"  # JSON text, as stored; `swept()` parses it
    seed: int = 0
    reseed_of: str = ""
    primary_metric: str = "primary"
    primary_mode: str = "min"
    primary_value: float = _NAN
    scored_at: float = _NAN
    status: str = OK  # a board from before the status column holds only scored rows
    error: str = ""
    # Only on some rows (None: not this trial's): sweep.repeats' seeds, sweep.cost's objective.
    selection_mean: float | None = None
    selection_std: float | None = None
    repeats: float | None = None
    cost_metric: str | None = None
    cost_value: float | None = None
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, record: dict) -> "Row":
        """A row as stored (a row object, or a record of the snapshot's frame, where a column
        another row has is None or NaN): missing or unreadable values take the defaults above."""
        values, metrics = {}, {}
        for key, value in record.items():
            kind = _KINDS.get(key)
            if kind is None:
                metrics[key] = _plain_value(value)
                continue
            value = _typed(kind, value)
            if value is not _MISSING:
                values[key] = value
        if "stage" not in values and "method" in values:
            values["stage"] = values["method"]
        return cls(trial_id=values.pop("trial_id", ""), metrics=metrics, **values)

    def to_json(self) -> dict:
        """The row object as the actor writes it: the columns in order, the optional ones only
        where set, and an errored trial without the score columns it never had."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "metrics" or value is None or (self.status == ERRORED and f.name in _SCORE_COLUMNS):
                continue
            out[f.name] = value
        return {**out, **self.metrics}

    def flat(self) -> dict:
        """Every column, defaults filled in (None for an optional one this row lacks): a frame's record."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics"}, **self.metrics}

    def swept(self) -> dict:
        """The params column parsed."""
        return parse_params(self.params)


_KINDS = {f.name: f.type for f in fields(Row) if f.name != "metrics"}
# The columns a scoring writes and an errored trial (never scored) does not have.
_SCORE_COLUMNS = ("selection_metric", "selection_mode", "selection_value", "val_loss", "primary_metric",
                  "primary_mode", "primary_value")
# Bookkeeping columns: every other numeric column is a downstream metric.
BOOKKEEPING = tuple(_KINDS)


_MISSING = object()


def _typed(kind: str, value):
    """`value` as a field's type (the annotations are strings here: `from __future__ import
    annotations`), or _MISSING: None, NaN where a text or whole number belongs (the frame's gap
    filler), or a value of another type. A float field keeps NaN: a row may store one."""
    value = _plain_value(value)
    if value is None or (isinstance(value, float) and math.isnan(value) and not kind.startswith("float")):
        return _MISSING
    try:
        if kind.startswith("str"):
            return value if isinstance(value, str) else str(value)
        return int(value) if kind.startswith("int") else float(value)
    except (TypeError, ValueError):
        return _MISSING


def _plain_value(value):
    """A numpy scalar as the Python one (what json writes)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def parse_params(text) -> dict:
    """The params column is a JSON object; a damaged one becomes {} rather than failing its reader."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def rows_of(board) -> list[Row]:
    """A frame (leaderboard.read's) or a list of row dicts, as typed rows."""
    records = board.to_dict("records") if isinstance(board, pd.DataFrame) else list(board)
    return [r if isinstance(r, Row) else Row.from_json(r) for r in records]


def frame(rows: list[Row]) -> pd.DataFrame:
    """Rows as a frame with every column of `Row`, defaults filled in (the report's view)."""
    extra = dict.fromkeys(k for r in rows for k in r.metrics)
    return pd.DataFrame.from_records([r.flat() for r in rows], columns=[*BOOKKEEPING, *extra])


def read_rows(sweep_dir) -> list[Row]:
    """The leaderboard as typed rows (see `read`)."""
    return rows_of(read(sweep_dir))


def originals(rows: list[Row], stage: str) -> list[dict]:
    """A stage's rows that are not re-seeds (the trials its search ran), as records for best/ranked."""
    return [r.flat() for r in rows if r.stage == stage and not r.reseed_of]


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


def append(sweep_dir, board: pd.DataFrame, row: Row | dict) -> pd.DataFrame:
    """Write `row` (a Row, or a row object's dict as it is to be stored) as its trial's row object,
    replacing an earlier one of the same trial, then the snapshot. -> `board` (the caller's view)
    with `row` in place of any row of the same trial."""
    stored = _plain(row.to_json() if isinstance(row, Row) else row)
    storage.write_text(row_location(sweep_dir, stored["trial_id"]), json.dumps(stored, default=str))
    write_snapshot(sweep_dir)
    if len(board) and "trial_id" in board:
        board = board[board["trial_id"] != stored["trial_id"]]
    return pd.concat([board, pd.DataFrame([stored])], ignore_index=True) if len(board) else pd.DataFrame([stored])


def write_snapshot(sweep_dir) -> pd.DataFrame:
    """Rewrite leaderboard.parquet from every row (see the module docstring). -> the board."""
    board = read(sweep_dir)
    if len(board):
        write_atomic(board, path(sweep_dir))
    return board


def _plain(row: dict) -> dict:
    """JSON-ready values (numpy scalars as Python ones; NaN stays NaN, which json reads back)."""
    return {k: _plain_value(v) for k, v in row.items()}


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
