"""A user's flat event table (+ optional target table) -> a prepared data set (docs/method.md#data).

Everything here is vectorised over events with numpy/pyarrow: one sort by (id, time), group
boundaries from the sorted ids, and per-field lookups over the distinct values only. No Python
loop runs per event or per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import sources
from .prepared import RESERVED_COLUMNS, write_prepared
from .schema import (
    FIRST_CODE,
    TASKS,
    TIME_UNITS,
    UNSEEN_CODE,
    CategoricalField,
    DataError,
    NumericField,
    Schema,
)


@dataclass(frozen=True)
class IngestSpec:
    """How to read a user's event table. Field lists name columns of that table."""

    id_col: str
    time_col: str
    cat_cols: tuple[str, ...] = ()
    num_cols: tuple[str, ...] = ()
    time_unit: str = "s"  # unit of numeric times, and the unit datetimes are converted to
    max_len: int = 1000  # keep the last max_len events of longer sequences
    min_len: int = 2  # sequences shorter than this are left out (and counted)
    min_count: int = 1  # categorical values seen fewer times in training map to UNSEEN_CODE
    test_fraction: float = 0.1  # of the labelled sequences (of all sequences without targets)
    val_fraction: float = 0.1  # of the non-test sequences
    seed: int = 0
    target_col: str | None = None
    task: str | None = None  # binary|multiclass|regression; inferred from the targets when None
    source: str = ""

    def __post_init__(self):
        if self.max_len < 1:
            raise DataError(f"--max-len must be at least 1, got {self.max_len}")
        if self.min_len < 1:
            raise DataError(f"--min-len must be at least 1, got {self.min_len}")
        if self.min_len > self.max_len:
            raise DataError(f"--min-len {self.min_len} is larger than --max-len {self.max_len}")
        if self.time_unit not in TIME_UNITS:
            raise DataError(f"--time-unit must be one of {', '.join(TIME_UNITS)}, got {self.time_unit!r}")
        if self.task is not None and self.task not in TASKS:
            raise DataError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0.0 <= self.test_fraction < 1.0 or not 0.0 <= self.val_fraction < 1.0:
            raise DataError("--test-fraction and the validation fraction must be in [0, 1)")
        if self.min_count < 1:
            raise DataError(f"min_count must be at least 1, got {self.min_count}")
        names = [self.id_col, self.time_col, *self.cat_cols, *self.num_cols]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DataError(f"column {sorted(dup)[0]!r} is named twice in the id/time/field lists")
        clash = set(self.cat_cols) | set(self.num_cols)
        clash &= set(RESERVED_COLUMNS)
        if clash:
            raise DataError(
                f"field name {sorted(clash)[0]!r} is reserved in prepared data sets; rename that column"
            )


def read_table(path, what: str = "events", text_cols=()) -> pa.Table:
    """A whole table in memory (a file, a directory or glob of files, or a URI; sources.py): one
    line for missing, unreadable or empty files. ``text_cols`` (the id column) are read from CSV as
    text, so ids such as ``007`` and ``7`` stay two ids."""
    return sources.read_table(path, what, text_cols)


def _require_columns(table: pa.Table, cols, what: str) -> None:
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise DataError(
            f"{what} table has no column {missing[0]!r} (columns: {', '.join(table.column_names)})"
        )


def _time_values(col: pa.ChunkedArray, name: str, unit: str) -> np.ndarray:
    """Times as float64 in `unit`; datetimes are converted, numbers taken as already in `unit`."""
    t = col.type
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    try:
        if numeric:
            values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        else:
            # datetimes, dates, or text holding either; nulls come back as NaN
            micros = pc.cast(pc.cast(col, pa.timestamp("us")), pa.int64()).to_numpy(zero_copy_only=False)
            values = micros.astype(np.float64) / 1e6 / TIME_UNITS[unit]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(
            f"time column {name!r} must hold numbers or datetimes, found {t} values like "
            f"{col.drop_null()[0].as_py()!r}"
        ) from None
    values = np.asarray(values, dtype=np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise DataError(f"time column {name!r} has {n_bad} missing or non-finite values; drop those events first")
    return values


def _numeric_values(col: pa.ChunkedArray, name: str) -> np.ndarray:
    """float64 with NaN for null and non-finite values; a clear error for non-numeric text."""
    t = col.type
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        arr = pc.cast(col, pa.float64())
    else:
        try:
            arr = pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            as_text = pc.cast(col, pa.string())
            ok = pc.match_substring_regex(
                pc.utf8_trim_whitespace(as_text),
                r"^([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|Inf|nan|NaN|NA)|)$",
            )
            bad_idx = pc.index(ok, False).as_py()
            bad_value = as_text[bad_idx].as_py() if bad_idx >= 0 else "?"
            raise DataError(
                f"numeric column {name!r} has a non-numeric value {bad_value!r} at row {bad_idx + 1}; "
                f"clean it or pass the column with --cat-cols"
            ) from None
    values = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    values = np.where(np.isfinite(values), values, np.nan)
    return values


def _event_order(id_codes: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Permutation sorting events by (id, time); events at equal times keep their file order."""
    same_id = id_codes[1:] == id_codes[:-1]
    if np.all(id_codes[1:] >= id_codes[:-1]) and np.all(times[1:][same_id] >= times[:-1][same_id]):
        return np.arange(len(id_codes))  # already grouped and sorted, as most exports are
    # Two stable passes (time, then id) are twice as fast as np.lexsort; a 16-bit id key lets
    # numpy use radix sort for the second pass.
    by_time = np.argsort(times, kind="stable")
    key_type = np.uint16 if id_codes.max(initial=0) < 2**16 else np.int64
    return by_time[np.argsort(id_codes.astype(key_type)[by_time], kind="stable")]


def checked_ids(col, spec: IngestSpec):
    """The id column as plain integers or text; missing ids and float ids are refused."""
    ids = sources.plain(col)
    if ids.null_count:
        raise DataError(f"id column {spec.id_col!r} has {ids.null_count} missing values")
    if pa.types.is_floating(ids.type):
        raise DataError(f"id column {spec.id_col!r} holds floats; ids must be integers or text")
    return ids


def select_events(id_codes: np.ndarray, n_ids: int, times: np.ndarray, spec: IngestSpec):
    """The events kept, in (id, time) order: the last ``max_len`` of each sequence, sequences
    shorter than ``min_len`` left out. ``id_codes`` number the ids 0..n_ids-1 in id order.
    -> (positions of the kept events in sorted order, events per id, kept per id, id kept)."""
    order = _event_order(id_codes, times)
    per_id = np.bincount(id_codes, minlength=n_ids)
    kept_len = np.minimum(per_id, spec.max_len)
    long_enough = kept_len >= spec.min_len
    # rank of each sorted event counted from its sequence's end: 1 for the last event
    sorted_ids = id_codes[order]
    from_end = np.cumsum(per_id)[sorted_ids] - np.arange(len(order))
    keep_event = (from_end <= spec.max_len) & long_enough[sorted_ids]
    del from_end, sorted_ids
    return order[keep_event], per_id, kept_len, long_enough


def kept_sequences(uniq_ids, long_enough: np.ndarray, kept_len: np.ndarray, kept_times: np.ndarray):
    """The sequences `select_events` kept -> (their ids as an Arrow array of integers or text,
    lengths, list offsets (N + 1), each kept event's time relative to its sequence's first one).
    `uniq_ids`: pd.factorize's ids in id order; `kept_times`: the kept events' times in order."""
    seq_ids = pa.array(np.asarray(uniq_ids)[long_enough])
    if not pa.types.is_string(seq_ids.type) and not pa.types.is_integer(seq_ids.type):
        seq_ids = pc.cast(seq_ids, pa.string())
    lengths = kept_len[long_enough].astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rel_time = kept_times - np.repeat(kept_times[offsets[:-1]], lengths)
    return seq_ids, lengths, offsets, rel_time


def assign_splits(seq_ids: pa.Array, labelled: np.ndarray, spec: IngestSpec) -> np.ndarray:
    """train/val/test per sequence from a hash of its id (and the seed) alone, so a sequence gets
    the same split whatever the other ids, the row order or the shard it lands in. The test split
    is drawn from the labelled sequences only."""
    ids = np.asarray(seq_ids.to_pylist(), dtype=object)
    u_test = _split_uniforms(ids, spec.seed, "test")
    u_val = _split_uniforms(ids, spec.seed, "val")
    split = np.full(len(ids), "train", dtype=object)
    is_test = labelled & (u_test < spec.test_fraction)
    split[is_test] = "test"
    split[~is_test & (u_val < spec.val_fraction)] = "val"
    return split


def robust_stats(train: np.ndarray) -> tuple[float, float]:
    """(median, IQR / 1.349) of a field's training values (NaN-free); the standard deviation where
    the IQR is 0, and 1 where that is 0 too."""
    if train.size == 0:
        return 0.0, 1.0
    q25, center, q75 = np.percentile(train, [25, 50, 75])
    scale = (q75 - q25) / 1.349  # IQR of a normal is 1.349 sigma
    if not scale > 0:
        scale = float(np.std(train))
        if not np.isfinite(scale):  # squares past float64's range: the same spread, computed scaled down
            top = float(np.max(np.abs(train)))
            scale = float(np.std(train / top)) * top
    if not scale > 0 or not np.isfinite(scale):
        scale = 1.0
    return float(center), float(scale)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_scaled_range(name: str, lo: float, hi: float, center: float, scale: float) -> None:
    """Refuse a field whose finite values leave float32's range once normalised: stored they
    would become inf (and training fail at its first step), a silent change of the data."""
    for v in (lo, hi):
        if np.isfinite(v) and abs((v - center) / scale) > FLOAT32_MAX:
            raise DataError(
                f"numeric column {name!r} holds {v:g}, which normalised ((x - {center:g}) / {scale:g}) is beyond "
                f"float32's range (±{FLOAT32_MAX:.3g}); rescale the column (e.g. a log) or drop those rows"
            )


def _split_uniforms(ids: np.ndarray, seed: int, salt: str) -> np.ndarray:
    """A deterministic uniform in [0, 1) per id: the same id gets the same split for the same seed,
    whatever the row order or the other ids in the file."""
    key = f"{seed:08d}{salt}"[:16].ljust(16, "0")
    h = pd.util.hash_array(np.asarray(ids).astype(str).astype(object), hash_key=key, categorize=False)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _fit_categorical(col: pa.ChunkedArray, train_events: np.ndarray, name: str, min_count: int):
    """Codes by descending training frequency (ties by value); rare and unseen values -> 1."""
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    encoded = pc.dictionary_encode(col).combine_chunks()
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    is_null = encoded.is_null().to_numpy(zero_copy_only=False)
    dictionary = np.asarray([str(v) for v in encoded.dictionary.to_pylist()], dtype=object)
    indices = np.where(is_null, 0, indices).astype(np.int64)
    counts = np.bincount(indices[train_events & ~is_null], minlength=len(dictionary))
    order = sorted(range(len(dictionary)), key=lambda i: (-counts[i], str(dictionary[i])))
    kept = [i for i in order if counts[i] >= min_count and counts[i] > 0]
    lut = np.full(max(len(dictionary), 1), UNSEEN_CODE, dtype=np.int32)
    lut[kept] = np.arange(FIRST_CODE, FIRST_CODE + len(kept), dtype=np.int32)
    codes = lut[indices]
    codes[is_null] = UNSEEN_CODE
    return codes, CategoricalField(name, tuple(str(dictionary[i]) for i in kept))


def _fit_numeric(values: np.ndarray, train_events: np.ndarray, name: str):
    train = values[train_events]
    center, scale = robust_stats(train[~np.isnan(train)])
    if values.size:
        check_scaled_range(name, float(np.nanmin(values)) if not np.isnan(values).all() else np.nan,
                           float(np.nanmax(values)) if not np.isnan(values).all() else np.nan, center, scale)
    z = ((values - center) / scale).astype(np.float32)
    return z, NumericField(name, float(center), float(scale))


def _infer_task(target: np.ndarray) -> str:
    if target.dtype.kind in "OUSb":
        return "binary" if len(np.unique(target)) <= 2 else "multiclass"
    finite = target[np.isfinite(target)]
    uniq = np.unique(finite)
    if np.all(np.equal(np.mod(uniq, 1), 0)):
        if len(uniq) <= 2:
            return "binary"
        if len(uniq) <= 50:
            return "multiclass"
    return "regression"


def target_columns(targets: pa.Table, spec: IngestSpec, id_type: pa.DataType):
    """The target table's ids (cast to the events' id type) and values, and which values are
    missing. -> (target column name, ids, values as numpy (float64, or object for text), missing)."""
    target_col = spec.target_col
    if target_col is None:
        others = [c for c in targets.column_names if c != spec.id_col]
        if len(others) != 1:
            raise DataError(
                f"target table has columns {targets.column_names}: name the target with --target-col"
            )
        target_col = others[0]
    _require_columns(targets, [spec.id_col, target_col], "target")
    sources.check_not_nested(targets.schema, [spec.id_col, target_col], "target")
    tid = sources.plain(targets.column(spec.id_col))
    if tid.null_count:
        raise DataError(f"target table has {tid.null_count} rows without an id")
    try:
        tid = pc.cast(tid, id_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        tid = pc.cast(pc.cast(tid, pa.string()), id_type) if sources.is_text(id_type) else None
        if tid is None:
            raise DataError(
                f"target ids ({targets.column(spec.id_col).type}) cannot be matched with event ids ({id_type})"
            ) from None
    if len(pc.unique(tid)) != len(tid):
        raise DataError(f"target table has duplicate ids in column {spec.id_col!r}; keep one target per id")
    raw = sources.plain(targets.column(target_col))
    if sources.is_text(raw.type) or pa.types.is_boolean(raw.type):
        values = np.asarray(pc.cast(raw, pa.string()).to_pylist(), dtype=object)
        missing = np.array([v is None or v == "" for v in values], dtype=bool) if len(values) < 10**6 else pd.isna(values)
    else:
        values = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
        missing = np.isnan(values)
    return target_col, tid, values, missing


def labelled_ids(targets: pa.Table, spec: IngestSpec, id_type: pa.DataType) -> pa.Array:
    """The ids with a target: a sequence is labelled (and may be drawn into the test split) iff
    its id is among them."""
    _, tid, _, missing = target_columns(targets, spec, id_type)
    return tid.filter(pa.array(~missing)).combine_chunks() if isinstance(tid, pa.ChunkedArray) else tid.filter(pa.array(~missing))


def _prepare_targets(targets: pa.Table, spec: IngestSpec, seq_ids: pa.Array):
    """-> (row index into seq_ids, target values, task, class_names, dropped count)."""
    target_col, tid, values, missing = target_columns(targets, spec, seq_ids.type)
    pos = pc.index_in(tid, value_set=seq_ids).to_numpy(zero_copy_only=False)
    pos = np.where(np.isnan(pos.astype(np.float64)), -1, pos).astype(np.int64) if pos.dtype.kind == "f" else pos
    matched = pos >= 0
    if not matched.any():
        raise DataError(
            f"no id of the target table matches a kept sequence id (e.g. target id "
            f"{tid[0].as_py()!r} vs sequence id {seq_ids[0].as_py()!r}); check --id-col and the files"
        )
    keep = matched & ~missing
    task = spec.task or _infer_task(values[keep])
    values, pos = values[keep], pos[keep]
    if task == "regression":
        if values.dtype == object:
            raise DataError(f"target column {target_col!r} holds text, which a regression task cannot use")
        return pos, values.astype(np.float64), task, (), int((~keep).sum())
    if values.dtype == object:
        class_names, class_idx = np.unique(values.astype(str), return_inverse=True)
    else:
        # Text labels of the distinct values only: as text per row they took ~1.8 GB at 4M sequences.
        uniq, inv = np.unique(values, return_inverse=True)
        names = np.where(np.mod(uniq, 1) == 0, uniq.astype(np.int64).astype(str), uniq.astype(str))
        class_names, name_idx = np.unique(names, return_inverse=True)
        class_idx = name_idx[inv]
    if task == "binary" and len(class_names) > 2:
        raise DataError(f"--task binary but target column {target_col!r} has {len(class_names)} classes")
    if len(class_names) < 2:
        raise DataError(f"target column {target_col!r} has a single class ({class_names[0]}); nothing to predict")
    return pos, class_idx.astype(np.int64), task, tuple(str(c) for c in class_names), int((~keep).sum())


def prepare(events: pa.Table, spec: IngestSpec, targets: pa.Table | None = None):
    """Encode an event table. Returns (sequences table, targets table or None, schema)."""
    _require_columns(events, [spec.id_col, spec.time_col, *spec.cat_cols, *spec.num_cols], "events")
    sources.check_not_nested(events.schema, [spec.id_col, spec.time_col, *spec.cat_cols, *spec.num_cols], "events")
    n_events_in = events.num_rows
    # Columns are released as soon as they are converted: with the caller holding no reference to
    # the table, peak memory stays near the table's own size.
    event_cols = {c: events.column(c) for c in (spec.id_col, spec.time_col, *spec.cat_cols, *spec.num_cols)}
    del events
    ids_col = checked_ids(event_cols.pop(spec.id_col), spec)
    times = _time_values(event_cols.pop(spec.time_col), spec.time_col, spec.time_unit)
    nums_raw = {c: _numeric_values(event_cols.pop(c), c) for c in spec.num_cols}

    id_codes, uniq_ids = pd.factorize(ids_col.to_numpy(zero_copy_only=False), sort=True)
    del ids_col
    sel, per_id, kept_len, long_enough = select_events(id_codes, len(uniq_ids), times, spec)
    del id_codes
    if sel.size == 0:
        raise DataError(
            f"no sequence has at least --min-len {spec.min_len} events (longest has {per_id.max()}); lower --min-len"
        )
    sel_arrow = pa.array(sel)

    kept_times = times[sel]
    del times
    seq_ids, lengths, offsets, rel_time = kept_sequences(uniq_ids, long_enough, kept_len, kept_times)
    del kept_times

    # Splits: the test set comes from labelled sequences when there are targets.
    n_seq = len(lengths)
    labelled = np.ones(n_seq, dtype=bool)
    target_rows = None
    if targets is not None:
        target_pos, target_values, task, class_names, target_dropped = _prepare_targets(targets, spec, seq_ids)
        labelled = np.zeros(n_seq, dtype=bool)
        labelled[target_pos] = True
        target_rows = (target_pos, target_values)
    else:
        task, class_names, target_dropped = None, (), 0
    split = assign_splits(seq_ids, labelled, spec)
    train_events = np.repeat(split == "train", lengths)

    columns = {
        "id": seq_ids,
        "split": pa.array(split, pa.string()),
        "length": pa.array(lengths.astype(np.int32)),
        "event_time": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(rel_time)),
    }
    cat_fields, num_fields = [], []
    for c in spec.cat_cols:
        codes, fld = _fit_categorical(sources.plain(event_cols.pop(c)).take(sel_arrow), train_events, c, spec.min_count)
        cat_fields.append(fld)
        columns[c] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(codes))
    for c in spec.num_cols:
        z, fld = _fit_numeric(nums_raw.pop(c)[sel], train_events, c)
        num_fields.append(fld)
        columns[c] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(z))
    sequences = pa.table(columns)

    target_table = None
    if target_rows is not None:
        pos, values = target_rows
        order_t = np.argsort(pos, kind="stable")
        target_table = pa.table({"id": seq_ids.take(pa.array(pos[order_t])), "target": pa.array(values[order_t])})

    counts = {
        "events_in": int(n_events_in),
        "events_kept": int(sel.size),
        "events_truncated": int((per_id - kept_len)[long_enough].sum()),
        "sequences_in": int(len(uniq_ids)),
        "sequences_kept": int(n_seq),
        "sequences_dropped_short": int((~long_enough).sum()),
        "events_dropped_short": int(per_id[~long_enough].sum()),
        "train": int((split == "train").sum()),
        "val": int((split == "val").sum()),
        "test": int((split == "test").sum()),
        "labelled": int(labelled.sum()) if targets is not None else 0,
        "targets_unused": int(target_dropped),
    }
    schema = Schema(
        id_col=spec.id_col,
        time_col=spec.time_col,
        time_unit=spec.time_unit,
        categorical=tuple(cat_fields),
        numeric=tuple(num_fields),
        task=task,
        target_col=spec.target_col if targets is not None else None,
        class_names=class_names,
        max_len=spec.max_len,
        min_len=spec.min_len,
        seed=spec.seed,
        counts=counts,
        source=spec.source,
    )
    return sequences, target_table, schema


def ingest(events_path, out, spec: IngestSpec, targets_path=None, overwrite: bool = False) -> Schema:
    """Read files, prepare and write atomically. Everything is validated before anything is written."""
    targets = read_table(targets_path, "target", text_cols=(spec.id_col,)) if targets_path else None
    if targets is not None and spec.target_col is None:
        others = [c for c in targets.column_names if c != spec.id_col]
        if len(others) == 1:
            spec = replace(spec, target_col=others[0])
    spec = replace(spec, source=str(events_path))
    # The event table is passed without keeping a name for it, so prepare() can free its columns.
    sequences, target_table, schema = prepare(read_table(events_path, "events", text_cols=(spec.id_col,)), spec, targets)
    written = write_prepared(out, sequences, target_table, schema, overwrite=overwrite)
    return Schema.load(written)  # with its shard listing
