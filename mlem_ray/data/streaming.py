"""Streaming ingest: an event table of any size -> a sharded prepared data set, in bounded memory.

The in-memory path (ingest.prepare) holds the whole table; this one holds one bucket of it:

- pass 1 reads the targets (the test split is drawn from labelled ids) and the files' metadata,
  which size the buckets (``--memory-gb``);
- pass 2 reads the events in record batches, file after file, converts them (times to float64
  in the schema's unit, numerics to float64, text types to ``string``) and hash-partitions them
  by id into bucket files spilled to local disk (Arrow IPC), so all events of an id meet in one
  bucket, in the order they were read;
- pass 3a sorts each bucket by (id, time), keeps the last ``--max-len`` events of each sequence,
  assigns the splits (a hash of the id: ingest.assign_splits) and gathers the statistics of the
  kept training events: the categorical counts exactly, and per numeric field a histogram of its
  training values' leading bits and their moments (quantiles.py);
- the quartiles' bins are then refined over the sorted buckets' numeric columns (a round or two
  of small reads, quantiles.py), which gives each field's median and IQR exactly as
  ingest.robust_stats computes them on all the values;
- pass 3b encodes each sorted bucket with the merged vocabularies and statistics into one shard
  (prepared.PreparedWriter), renamed into place at the end.

The statistics are over the events kept after truncation, as in the in-memory path, so they can
only be gathered once a bucket is sorted (pass 3a), not while reading (pass 2). The driver holds
the summaries (a fixed-size histogram per numeric field, the vocabularies' counts, the kept ids)
and never the table's values, so its memory does not grow with the number of events.

What equals the in-memory path on the same table and seed: the sequences (ids, events, order of
events), codes, vocabularies, statistics, splits, targets and counts. What differs:
the rows are ordered by shard (shard k holds the ids whose hash falls in bucket k, sorted by id
within it) instead of by id overall.

The passes are plain functions of files in and files out, so `cluster.py` runs them as Ray tasks
(one per input file for pass 2, one per bucket for pass 3) with the same result.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from .. import storage
from . import sources
from .ingest import (
    IngestSpec,
    _numeric_values,
    _prepare_targets,
    _time_values,
    assign_splits,
    check_scaled_range,
    checked_ids,
    kept_sequences,
    labelled_ids,
    select_events,
)
from .quantiles import VALUES_CAP, FieldQuantiles, Moments, answer, first_histogram, order_keys, robust_stats_of
from .prepared import PreparedWriter, shard_entry, shard_name, write_shard
from .schema import FIRST_CODE, UNSEEN_CODE, CategoricalField, DataError, NumericField, Schema

BATCH_ROWS = 1 << 20  # rows per record batch read in pass 2
# Bytes of working memory per event of a bucket in pass 3 (measured on the standard table:
# the bucket's columns, the sort permutation, the kept events' copies and the list columns
# being built, about 5x the spilled row of 48 bytes).
WORK_BYTES_PER_EVENT = 250
# Larger buckets are no faster, and would make memory grow with the data. Buckets this small also
# keep the bucket size (the table's events over a whole number of buckets) within 10 % of this
# from 20M events up, so the peak memory is flat from there.
MAX_BUCKET_EVENTS = 2_000_000
PARALLEL_FROM_EVENTS = 4_000_000  # starting worker processes (about a second each) costs more below
SPILL_PREFIX = ".mlem-ingest-spill-"
# The spilled and sorted buckets are written LZ4-compressed: 29 instead of 48 bytes an event of the
# standard table, for about 0.02 s of CPU per million events each way. Ingest at scale waits on
# the disk (about 13 GB written at 100M events uncompressed, at some 235 MB/s here), not the CPU.
SPILL_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


def default_memory_gb() -> float:
    """A quarter of this machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return round(total / 4 / 2**30, 1)


# ---- pass 1: sizes ---------------------------------------------------------------------------

def estimate_events(files: list[sources.InputFile]) -> int:
    """Rows of the table: exact for Parquet (its metadata), estimated from the byte size for CSV."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        if f.is_parquet:
            try:
                fs, path = storage.resolve(f.location)
                with fs.open_input_file(path) as h:
                    total += pq.ParquetFile(h).metadata.num_rows
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"cannot read events file {f.location}: {sources._first_line(e)}") from None
        else:
            total += f.size // 24 + 1  # a CSV line of the standard table is about 40 bytes; err on the large side
    return total


def bucket_count(events: int, memory_gb: float, concurrent: int = 1) -> int:
    """Buckets such that `concurrent` buckets in pass 3 fit the budget, none past MAX_BUCKET_EVENTS."""
    if memory_gb <= 0:
        raise DataError(f"--memory-gb must be positive, got {memory_gb}")
    per_bucket = min(MAX_BUCKET_EVENTS, int(memory_gb * 2**30 * 0.6 / concurrent / WORK_BYTES_PER_EVENT))
    if per_bucket < 10_000:
        raise DataError(f"--memory-gb {memory_gb} is too small to ingest in (at least "
                        f"{10_000 * WORK_BYTES_PER_EVENT * concurrent / 0.6 / 2**30:.2f} needed)")
    return max(1, math.ceil(events / per_bucket))


# ---- pass 2: partition -----------------------------------------------------------------------

SPILL_ID, SPILL_TIME = "id", "t"


def _cat(j: int) -> str:
    return f"c{j}"


def _num(j: int) -> str:
    return f"n{j}"


def spill_batch(batch: pa.RecordBatch, spec: IngestSpec) -> pa.RecordBatch:
    """A batch of the user's columns -> the spilled form (validated, converted)."""
    ids = checked_ids(batch.column(spec.id_col), spec)
    times = _time_values(batch.column(spec.time_col), spec.time_col, spec.time_unit)
    arrays = [ids, pa.array(times, pa.float64())]
    names = [SPILL_ID, SPILL_TIME]
    for j, c in enumerate(spec.cat_cols):
        arrays.append(sources.plain(batch.column(c)))
        names.append(_cat(j))
    for j, c in enumerate(spec.num_cols):
        arrays.append(pa.array(_numeric_values(batch.column(c), c), pa.float64()))
        names.append(_num(j))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def bucket_of(ids: pa.Array, n_buckets: int) -> np.ndarray:
    """Bucket per id: a hash of the id's value (integers as int64, text as text), so an id lands in
    the same bucket whatever file or batch it is read in."""
    if n_buckets == 1:
        return np.zeros(len(ids), dtype=np.int64)
    if pa.types.is_integer(ids.type):
        h = pd.util.hash_array(ids.to_numpy(zero_copy_only=False).astype(np.int64), categorize=False)
    else:
        enc = pc.dictionary_encode(ids)
        hd = pd.util.hash_array(np.asarray(enc.dictionary.to_pylist(), dtype=object), categorize=False)
        h = hd[enc.indices.to_numpy(zero_copy_only=False)]
    return (h % np.uint64(n_buckets)).astype(np.int64)


def _check_columns(schema: pa.Schema, spec: IngestSpec, where: str) -> None:
    cols = [spec.id_col, spec.time_col, *spec.cat_cols, *spec.num_cols]
    missing = [c for c in cols if c not in schema.names]
    if missing:
        raise DataError(f"events table has no column {missing[0]!r} (columns: {', '.join(schema.names)}) in {where}")
    sources.check_not_nested(schema, cols, "events")


class Partitioner:
    """Writes spilled batches into one Arrow IPC file per bucket (``b<bucket>-<tag>.arrow``),
    opened when a bucket gets its first rows."""

    def __init__(self, spill_dir: str, n_buckets: int, tag: str = "all"):
        self.spill_dir, self.n_buckets, self.tag = spill_dir, n_buckets, tag
        self.writers: dict[int, tuple] = {}
        self.schema: pa.Schema | None = None
        self.rows = 0

    def path(self, b: int) -> str:
        return storage.join(self.spill_dir, f"b{b:05d}-{self.tag}.arrow")

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self.schema is None:
            self.schema = batch.schema
        elif batch.schema != self.schema:
            try:
                batch = pa.RecordBatch.from_arrays(
                    [pc.cast(batch.column(i), f.type) for i, f in enumerate(self.schema)], schema=self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(f"a column's type changes between the events files ({self.schema} vs "
                                f"{batch.schema}); write them with one type per column") from None
        self.rows += batch.num_rows
        buckets = bucket_of(batch.column(0), self.n_buckets)
        if self.n_buckets > 1:
            order = np.argsort(buckets, kind="stable")
            batch = batch.take(pa.array(order))
            buckets = buckets[order]
        bounds = np.flatnonzero(np.diff(buckets)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(buckets)]):
            self._writer(int(buckets[lo])).write_batch(batch.slice(int(lo), int(hi - lo)))

    def _writer(self, b: int):
        if b not in self.writers:
            fs, path = storage.resolve(self.path(b))
            sink = fs.open_output_stream(path)
            self.writers[b] = (sink, ipc.new_file(sink, self.schema, options=SPILL_OPTIONS))
        return self.writers[b][1]

    def close(self) -> dict[int, str]:
        for sink, writer in self.writers.values():
            writer.close()
            sink.close()
        return {b: self.path(b) for b in sorted(self.writers)}


def partition_files(files: list[sources.InputFile], spec: IngestSpec, spill_dir: str, n_buckets: int,
                    tag: str = "all") -> tuple[dict[int, str], int]:
    """Pass 2 over some files, in order. -> ({bucket: spill file}, rows read)."""
    part = Partitioner(spill_dir, n_buckets, tag)
    cols = [spec.id_col, spec.time_col, *spec.cat_cols, *spec.num_cols]
    try:
        for f in files:
            for batch in sources.iter_batches(f, "events", cols, text_cols=(spec.id_col,), batch_size=BATCH_ROWS):
                if part.schema is None:
                    _check_columns(batch.schema, spec, f.location)
                part.add(spill_batch(batch, spec))
    finally:
        spilled = part.close()
    return spilled, part.rows


# ---- pass 3a: sort, truncate, split, statistics ------------------------------------------------

def _read_ipc(location: str, columns: list[str] | None = None) -> pa.Table:
    """A spilled or sorted bucket, or only the named columns of it (only those are decompressed)."""
    fs, path = storage.resolve(location)

    def read(source):
        if columns is None:
            return ipc.open_file(source).read_all()
        names = ipc.open_file(source).schema.names
        opts = ipc.IpcReadOptions(included_fields=[names.index(c) for c in columns])
        return ipc.open_file(source, options=opts).read_all()

    if fs.type_name == "local":
        return read(pa.memory_map(path, "r"))
    with fs.open_input_file(path) as f:
        return read(f)


def _write_ipc(location: str, table: pa.Table) -> None:
    fs, path = storage.resolve(location)
    with fs.open_output_stream(path) as sink, ipc.new_file(sink, table.schema, options=SPILL_OPTIONS) as writer:
        writer.write_table(table)


@dataclass
class BucketSummary:
    """What pass 3a learnt from one bucket, for merging."""

    arranged: str | None  # the sorted bucket's file (None: no sequence kept)
    seq_ids: pa.Array
    counts: dict
    cat_counts: list  # per categorical field: {str(value): (count, value)}
    num_stats: list  # per numeric field: (histogram of its training values' keys, their Moments)
    num_range: list  # per numeric field: (min, max) of kept values (NaN when none)
    longest: int = 0  # events of the bucket's longest sequence


def _empty_counts() -> dict:
    return {k: 0 for k in ("events_in", "events_kept", "events_truncated", "sequences_in", "sequences_kept",
                           "sequences_dropped_short", "events_dropped_short", "train", "val", "test", "labelled")}


def arrange_bucket(parts: list[str], spec: IngestSpec, labelled: pa.Array | None, arranged: str) -> BucketSummary:
    """Pass 3a on one bucket (its spill files, in read order) -> the sorted, truncated bucket
    (raw values, written to `arranged`) and its summary."""
    tables = [_read_ipc(p) for p in parts]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    counts = _empty_counts()
    counts["events_in"] = table.num_rows
    n_cat, n_num = len(spec.cat_cols), len(spec.num_cols)
    empty = BucketSummary(None, pa.array([], table.schema.field(SPILL_ID).type), counts,
                          [{} for _ in range(n_cat)],
                          [(first_histogram(np.zeros(0, np.uint64)), Moments()) for _ in range(n_num)],
                          [(np.nan, np.nan)] * n_num)
    if table.num_rows == 0:
        return empty
    id_codes, uniq = pd.factorize(table.column(SPILL_ID).to_numpy(), sort=True)
    times = table.column(SPILL_TIME).to_numpy()
    sel, per_id, kept_len, long_enough = select_events(id_codes, len(uniq), times, spec)
    del id_codes
    empty.longest = int(per_id.max())
    counts.update(sequences_in=len(uniq), events_kept=int(sel.size),
                  events_truncated=int((per_id - kept_len)[long_enough].sum()),
                  sequences_dropped_short=int((~long_enough).sum()),
                  events_dropped_short=int(per_id[~long_enough].sum()))
    if sel.size == 0:
        return replace(empty, counts=counts)
    kept_times = times[sel]
    del times
    seq_ids, lengths, offsets, rel_time = kept_sequences(uniq, long_enough, kept_len, kept_times)
    del kept_times

    is_labelled = (pc.is_in(seq_ids, value_set=labelled).to_numpy(zero_copy_only=False)
                   if labelled is not None else np.ones(len(lengths), dtype=bool))
    split = assign_splits(seq_ids, is_labelled, spec)
    train_events = np.repeat(split == "train", lengths)
    counts.update(sequences_kept=len(lengths), train=int((split == "train").sum()), val=int((split == "val").sum()),
                  test=int((split == "test").sum()), labelled=int(is_labelled.sum()) if labelled is not None else 0)

    list_offsets = pa.array(offsets.astype(np.int32))
    columns = {"id": seq_ids, "split": pa.array(split, pa.string()), "length": pa.array(lengths.astype(np.int32)),
               "event_time": pa.ListArray.from_arrays(list_offsets, pa.array(rel_time))}
    sel_arrow = pa.array(sel)
    train_arrow = pa.array(train_events)
    cat_counts = []
    for j in range(n_cat):
        values = table.column(_cat(j)).take(sel_arrow).combine_chunks()
        vc = pc.value_counts(values.filter(train_arrow).drop_null())
        raw = vc.field("values").to_pylist()
        cat_counts.append({str(v): (int(n), v) for v, n in zip(raw, vc.field("counts").to_pylist())})
        columns[_cat(j)] = pa.ListArray.from_arrays(list_offsets, values)
    num_stats, num_range = [], []
    for j in range(n_num):
        v = table.column(_num(j)).to_numpy()[sel]
        tv = v[train_events & ~np.isnan(v)]
        num_stats.append((first_histogram(order_keys(tv)), Moments.of(tv)))
        finite = not np.isnan(v).all()
        num_range.append((float(np.nanmin(v)), float(np.nanmax(v))) if finite else (np.nan, np.nan))
        columns[_num(j)] = pa.ListArray.from_arrays(list_offsets, pa.array(v))
    del table, tables
    _write_ipc(arranged, pa.table(columns))
    return BucketSummary(arranged, seq_ids, counts, cat_counts, num_stats, num_range, int(per_id.max()))


# ---- merging the statistics --------------------------------------------------------------------

def refine_bucket(arranged: str, n_num: int, requests: list) -> list:
    """A sorted bucket's answers to the quartile selection's requests (quantiles.answer), per
    numeric field; reads only the bucket's split, length and numeric columns."""
    t = _read_ipc(arranged, ["split", "length"] + [_num(j) for j in range(n_num) if requests[j]])
    train = np.repeat(pc.equal(t.column("split"), "train").to_numpy(zero_copy_only=False),
                      t.column("length").to_numpy().astype(np.int64))
    out = []
    for j in range(n_num):
        if not requests[j]:
            out.append([])
            continue
        v = pc.list_flatten(t.column(_num(j))).to_numpy()
        out.append(answer(order_keys(v[train & ~np.isnan(v)]), requests[j]))
    return out


def select_quartiles(summaries: list[BucketSummary], quantiles: list[FieldQuantiles], run) -> None:
    """Refine each numeric field's quartile bins over the sorted buckets until every order
    statistic is found (at most 4 rounds: 20 + 16 + 16 + 12 bits; usually 1)."""
    for q in quantiles:
        q.start()
    kept = [s.arranged for s in summaries if s.arranged]
    while any(q.pending for q in quantiles):
        requests = [q.requests() for q in quantiles]
        answers = [[[] for _ in r] for r in requests]  # per field, per request: the buckets' answers
        for per_field in run(refine_bucket, [(a, len(quantiles), requests) for a in kept]):
            for j, per_request in enumerate(per_field):
                for i, part in enumerate(per_request):
                    if requests[j][i][2]:
                        answers[j][i].append(part)
                    else:  # a histogram: summed as it comes, so one per request is held
                        answers[j][i] = [part + answers[j][i][0]] if answers[j][i] else [part]
        for q, a in zip(quantiles, answers):
            q.resolve(a)


@dataclass
class Fitted:
    """The merged vocabularies and statistics, applied to every bucket in pass 3b."""

    categorical: tuple  # CategoricalField per field
    vocab_values: list  # per field, pa.Array of the vocabulary's raw values (code = index + FIRST_CODE)
    numeric: tuple  # NumericField per field


def fit(summaries: list[BucketSummary], spec: IngestSpec, value_types: list, quantiles: list[FieldQuantiles]) -> Fitted:
    """Vocabularies and statistics from the buckets' summaries and each numeric field's resolved
    quartile selection."""
    cats, vocab_values = [], []
    for j, name in enumerate(spec.cat_cols):
        merged: dict[str, list] = {}
        for s in summaries:
            for key, (n, v) in s.cat_counts[j].items():
                if key in merged:
                    merged[key][0] += n
                else:
                    merged[key] = [n, v]
        # by descending training count, ties by the value's text (as ingest._fit_categorical)
        order = sorted(merged, key=lambda k: (-merged[k][0], k))
        kept = [k for k in order if merged[k][0] >= spec.min_count and merged[k][0] > 0]
        cats.append(CategoricalField(name, tuple(kept)))
        vocab_values.append(pa.array([merged[k][1] for k in kept], type=value_types[j]))
    nums = []
    for j, name in enumerate(spec.num_cols):
        center, scale = robust_stats_of(quantiles[j])
        lo = min((s.num_range[j][0] for s in summaries if not np.isnan(s.num_range[j][0])), default=np.nan)
        hi = max((s.num_range[j][1] for s in summaries if not np.isnan(s.num_range[j][1])), default=np.nan)
        check_scaled_range(name, lo, hi, center, scale)
        nums.append(NumericField(name, center, scale))
    return Fitted(tuple(cats), vocab_values, tuple(nums))


# ---- pass 3b: encode ---------------------------------------------------------------------------

def encode_bucket(arranged: str, spec: IngestSpec, fitted: Fitted) -> pa.Table:
    """A sorted bucket's raw values -> the shard's table (codes, normalised numerics)."""
    t = _read_ipc(arranged).combine_chunks()
    time_lists = t.column("event_time").chunk(0)
    offsets = time_lists.offsets
    columns = {"id": t.column("id").chunk(0), "split": t.column("split").chunk(0),
               "length": t.column("length").chunk(0), "event_time": time_lists}
    for j, name in enumerate(spec.cat_cols):
        values = t.column(_cat(j)).chunk(0).flatten()
        pos = pc.index_in(values, value_set=fitted.vocab_values[j])
        codes = pc.fill_null(pc.add(pc.cast(pos, pa.int32()), pa.scalar(FIRST_CODE, pa.int32())),
                             pa.scalar(UNSEEN_CODE, pa.int32()))
        columns[name] = pa.ListArray.from_arrays(offsets, codes)
    for j, name in enumerate(spec.num_cols):
        f = fitted.numeric[j]
        v = t.column(_num(j)).chunk(0).flatten().to_numpy(zero_copy_only=False)
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(((v - f.center) / f.scale).astype(np.float32)))
    return pa.table(columns)


# ---- the whole ingest, on one machine ----------------------------------------------------------

def make_schema(spec: IngestSpec, fitted: Fitted, counts: dict, task, class_names, with_targets: bool) -> Schema:
    return Schema(id_col=spec.id_col, time_col=spec.time_col, time_unit=spec.time_unit,
                  categorical=fitted.categorical, numeric=fitted.numeric, task=task,
                  target_col=spec.target_col if with_targets else None, class_names=class_names,
                  max_len=spec.max_len, min_len=spec.min_len, seed=spec.seed, counts=counts, source=spec.source)


def total_counts(summaries: list[BucketSummary]) -> dict:
    counts = _empty_counts()
    for s in summaries:
        for k in counts:
            counts[k] += s.counts[k]
    return counts


def finish_targets(targets: pa.Table | None, spec: IngestSpec, summaries: list[BucketSummary], counts: dict):
    """Targets matched against every kept sequence (rows in shard order), as the in-memory path
    does against its own. -> (targets table or None, task, class names)."""
    if targets is None:
        counts["targets_unused"] = 0
        return None, None, ()
    seq_ids = pa.concat_arrays([s.seq_ids for s in summaries if len(s.seq_ids)])
    pos, values, task, class_names, dropped = _prepare_targets(targets, spec, seq_ids)
    counts["targets_unused"] = int(dropped)
    order = np.argsort(pos, kind="stable")
    table = pa.table({"id": seq_ids.take(pa.array(pos[order])), "target": pa.array(values[order])})
    return table, task, class_names


def spill_root(out, tmp_dir=None) -> Path:
    """Where the spill files go: --tmp-dir, or next to a local --out (the same disk the data set is
    written to), or the system's temp dir for an --out on object storage."""
    if tmp_dir:
        return Path(tmp_dir)
    if not storage.is_uri(out):
        return Path(storage.resolve(out)[1]).parent
    return Path(tempfile.gettempdir())


def remove_stale_spills(root: Path) -> None:
    """Spill directories of ingests that were killed (their process is gone)."""
    try:
        entries = list(root.glob(f"{SPILL_PREFIX}*"))
    except OSError:
        return
    for d in entries:
        try:
            pid = int(d.name[len(SPILL_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_spill_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_spills(root)
    return Path(tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=root))


def read_targets(targets_path, spec: IngestSpec):
    if not targets_path:
        return None, spec
    targets = sources.read_table(targets_path, "target", text_cols=(spec.id_col,))
    if spec.target_col is None:
        others = [c for c in targets.column_names if c != spec.id_col]
        if len(others) == 1:
            spec = replace(spec, target_col=others[0])
    return targets, spec


def id_type_of(files: list[sources.InputFile], spec: IngestSpec) -> pa.DataType:
    """The events' id type as spilled: text for CSV, the stored type for Parquet (text types as string)."""
    if not files[0].is_parquet:
        return pa.string()
    import pyarrow.parquet as pq

    fs, path = storage.resolve(files[0].location)
    try:
        with fs.open_input_file(path) as h:
            schema = pq.ParquetFile(h).schema_arrow
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read events file {files[0].location}: {sources._first_line(e)}") from None
    _check_columns(schema, spec, files[0].location)
    t = schema.field(spec.id_col).type
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.string() if sources.is_text(t) else t


def work_units(files: list[sources.InputFile], pieces: int) -> list[sources.InputFile]:
    """The files, Parquet ones cut into runs of row groups so that there are about `pieces`
    units to read in parallel; in read order (a bucket's parts are concatenated in this order)."""
    if pieces <= 1 or len(files) >= pieces:
        return files
    import pyarrow.parquet as pq

    units = []
    per_file = math.ceil(pieces / len(files))
    for f in files:
        if not f.is_parquet:
            units.append(f)
            continue
        fs, path = storage.resolve(f.location)
        with fs.open_input_file(path) as h:
            groups = pq.ParquetFile(h).metadata.num_row_groups
        bounds = np.linspace(0, groups, min(per_file, groups) + 1).astype(int)
        units += [replace(f, row_groups=tuple(range(a, b))) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return units


def partition_unit(unit: sources.InputFile, index: int, spec: IngestSpec, spill: str, n_buckets: int):
    """Pass 2 on one unit (a file or a run of its row groups): spill files tagged by the unit."""
    return partition_files([unit], spec, spill, n_buckets, tag=f"u{index:05d}")


def arrange_parts(parts: list[str], spec: IngestSpec, labelled, arranged: str) -> BucketSummary:
    """Pass 3a on one bucket; its spill files are removed once the sorted copy is written (disk
    use stays near one copy of the table)."""
    summary = arrange_bucket(parts, spec, labelled, arranged)
    for p in parts:
        storage.delete(p)
    return summary


def encode_to_shard(arranged: str, spec: IngestSpec, fitted: Fitted, schema: Schema, shard_dir: str,
                    name: str) -> dict:
    """Pass 3b on one bucket: its shard's files in `shard_dir` (a directory, or a URI: written
    locally with the data set's fixed settings, then uploaded) -> the shard's entry."""
    table = encode_bucket(arranged, spec, fitted)
    storage.delete(arranged)
    if not storage.is_uri(shard_dir):
        write_shard(Path(shard_dir), name, table)
    else:
        local = Path(tempfile.mkdtemp(prefix="mlem-shard-"))
        try:
            write_shard(local, name, table)
            storage.upload(local, shard_dir)
        finally:
            shutil.rmtree(local, ignore_errors=True)
    return shard_entry(name, table, schema)


class LocalMap:
    """Runs a pass's tasks here (one worker) or in a pool of processes on this machine."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: a forked copy of a process running pyarrow's thread pools can deadlock
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, fn, calls: list[tuple]):
        """The results in call order, each handed out as soon as it is there (and then let go of,
        so a caller that folds them in holds one at a time)."""
        if self.pool is None:
            for args in calls:
                yield fn(*args)
            return
        futures = [self.pool.submit(fn, *args) for args in calls]
        for i in range(len(futures)):
            result = futures[i].result()
            futures[i] = None
            yield result


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def run_passes(units, spec: IngestSpec, labelled, targets, spill: str, shard_dir_for, n_buckets: int,
               values_cap: int, run, say):
    """Passes 2 and 3 with `run(fn, calls)` doing each pass's tasks (here, in a process pool or as
    Ray tasks). `shard_dir_for(schema)` -> where pass 3b writes the shards (a writer's temp dir).
    -> (schema with its shards, targets table)."""
    results = list(run(partition_unit, [(u, i, spec, spill, n_buckets) for i, u in enumerate(units)]))
    if sum(rows for _, rows in results) == 0:
        raise DataError("the events table has a header but no rows")
    say(f"pass 2: {sum(rows for _, rows in results):,} events partitioned")
    buckets = [b for b in range(n_buckets) if any(b in spilled for spilled, _ in results)]
    # Each bucket's numeric histograms are folded in as it arrives and then dropped, so the
    # driver holds one histogram per field, not one per bucket.
    quantiles = [FieldQuantiles(values_cap) for _ in spec.num_cols]
    summaries = []
    for s in run(arrange_parts, [([spilled[b] for spilled, _ in results if b in spilled], spec, labelled,
                                  storage.join(spill, f"sorted-{b:05d}.arrow")) for b in buckets]):
        for j, q in enumerate(quantiles):
            q.add(*s.num_stats[j])
        s.num_stats = None
        summaries.append(s)
    say(f"pass 3a: {len(buckets)} bucket(s) sorted")
    counts = total_counts(summaries)
    if counts["events_kept"] == 0:
        raise DataError(f"no sequence has at least --min-len {spec.min_len} events (longest has "
                        f"{max(s.longest for s in summaries)}); lower --min-len")
    select_quartiles(summaries, quantiles, run)
    say("statistics: quartiles selected")
    fitted = fit(summaries, spec, cat_value_types(summaries, spec), quantiles)
    target_table, task, class_names = finish_targets(targets, spec, summaries, counts)
    schema = make_schema(spec, fitted, counts, task, class_names, targets is not None)
    kept = [s for s in summaries if s.arranged]
    shard_dir = shard_dir_for(schema)
    say(f"pass 3b: shard 1/{len(kept)}")
    entries = list(run(encode_to_shard, [(s.arranged, spec, fitted, schema, shard_dir, shard_name(i))
                                    for i, s in enumerate(kept)]))
    say(f"pass 3b: {len(kept)} shard(s) written")
    return schema.with_shards(entries), target_table


def stream_ingest(events_path, out, spec: IngestSpec, targets_path=None, overwrite: bool = False,
                  memory_gb: float | None = None, tmp_dir=None, n_buckets: int | None = None,
                  values_cap: int = VALUES_CAP, progress=None, workers: int | None = None) -> Schema:
    """The three passes on this machine, in `workers` processes (default: up to 2); `out` a
    directory (or a URI: written locally, then uploaded by `publish`). Nothing in `out` changes
    until the data set is complete. The worker processes are spawned, so a script calling this
    with workers > 1 (the default on a table of 4M events or more) keeps its own top-level code
    under ``if __name__ == "__main__":``."""
    say = progress or (lambda msg: None)
    targets, spec = read_targets(targets_path, spec)
    spec = replace(spec, source=str(events_path))
    files = sources.list_files(events_path, "events")
    id_type = id_type_of(files, spec)
    labelled = labelled_ids(targets, spec, id_type) if targets is not None else None
    events = estimate_events(files)
    if workers is None:
        workers = default_workers() if events >= PARALLEL_FROM_EVENTS else 1
    if n_buckets is None:
        n_buckets = bucket_count(events, memory_gb or default_memory_gb(), concurrent=workers)
    spill = make_spill_dir(spill_root(out, tmp_dir))
    local_out = Path(out) if not storage.is_uri(out) else spill / "out"
    units = work_units(files, 2 * workers if workers > 1 else 1)
    say(f"pass 2: {len(units)} unit(s) of {len(files)} file(s), about {events:,} events -> {n_buckets} bucket(s) "
        f"in {spill}, {workers} worker(s)")
    try:
        with LocalMap(workers) as run, PreparedWriter(local_out, overwrite=overwrite or storage.is_uri(out)) as writer:
            schema, target_table = run_passes(units, spec, labelled, targets, str(spill),
                                              lambda schema: str(writer.directory), n_buckets, values_cap, run, say)
            for e in schema.shards:
                writer.add_written_shard(e)
            writer.finish(schema, target_table)
        if storage.is_uri(out):
            publish(local_out, out, overwrite)
        return schema
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def cat_value_types(summaries, spec) -> list:
    """Each categorical field's spilled type (from a sorted bucket's file schema)."""
    first = next((s.arranged for s in summaries if s.arranged), None)
    if first is None:
        return [pa.null()] * len(spec.cat_cols)
    fs, path = storage.resolve(first)
    with fs.open_input_file(path) as f:
        schema = ipc.open_file(f).schema
    return [schema.field(_cat(j)).type.value_type for j in range(len(spec.cat_cols))]


def publish(local_dir: Path, out: str, overwrite: bool) -> None:
    """Upload a finished data set to object storage: every file, then ``schema.json`` last (a
    reader takes a location without it for no data set). An existing data set there is removed
    just before (with --overwrite); an ingest interrupted before this point leaves it intact."""
    check_out_uri(out, overwrite)
    staging = local_dir.parent / f"upload-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    schema_bytes = (local_dir / "schema.json").read_bytes()
    for f in local_dir.iterdir():
        if f.name != "schema.json":
            os.link(f, staging / f.name)  # same disk (both under the spill directory): no copy
    storage.delete(out)
    storage.upload(staging, out)
    storage.write_bytes(storage.join(out, "schema.json"), schema_bytes)
    shutil.rmtree(staging, ignore_errors=True)


def check_out_uri(out: str, overwrite: bool) -> None:
    """An --out on object storage that holds files is replaced only with --overwrite."""
    try:
        names = storage.listdir(out)
    except OSError as e:
        raise DataError(f"--out {out}: {storage.explain(e)}") from None
    if names and not overwrite:
        raise DataError(f"--out {out} already holds files; pass --overwrite to replace them or pick another location")


# ---- choosing the path -------------------------------------------------------------------------

IN_MEMORY_BYTES_PER_VALUE = 8 * 3  # the in-memory path peaks near 3x the table's Arrow size (benchmarks/ingest.py)
STREAMING_MODES = ("auto", "on", "off")


def in_memory_bytes(events: int, spec: IngestSpec) -> int:
    """What the in-memory path would hold at its peak for a table of `events` rows."""
    return events * IN_MEMORY_BYTES_PER_VALUE * (2 + len(spec.cat_cols) + len(spec.num_cols))


def ingest_any(events_path, out, spec: IngestSpec, targets_path=None, overwrite: bool = False,
               streaming: str = "auto", memory_gb: float | None = None, tmp_dir=None, address: str | None = None,
               progress=None) -> tuple[Schema, str]:
    """`mlem-ray data ingest`: the in-memory path for a table whose in-memory peak fits the memory
    budget (it is faster), streaming otherwise (`streaming` on/off forces one); with `address`,
    the streaming passes as Ray tasks on that cluster (data/cluster.py). -> (schema, path taken)."""
    from .ingest import ingest

    if streaming not in STREAMING_MODES:
        raise DataError(f"--streaming must be one of {', '.join(STREAMING_MODES)}, got {streaming!r}")
    budget = memory_gb if memory_gb is not None else default_memory_gb()
    if budget <= 0:
        raise DataError(f"--memory-gb must be positive, got {budget}")
    if storage.is_uri(out):
        check_out_uri(out, overwrite)
    if address:
        from .cluster import cluster_ingest

        return cluster_ingest(events_path, out, spec, targets_path=targets_path, overwrite=overwrite,
                              memory_gb=budget, tmp_dir=tmp_dir, address=address, progress=progress), "cluster"
    if streaming == "auto":
        files = sources.list_files(events_path, "events")
        streaming = "on" if in_memory_bytes(estimate_events(files), spec) > budget * 2**30 else "off"
    if streaming == "on":
        return stream_ingest(events_path, out, spec, targets_path=targets_path, overwrite=overwrite,
                             memory_gb=budget, tmp_dir=tmp_dir, progress=progress), "streaming"
    if not storage.is_uri(out):
        return ingest(events_path, out, spec, targets_path=targets_path, overwrite=overwrite), "in-memory"
    local = Path(tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=spill_root(out, tmp_dir)))
    try:
        schema = ingest(events_path, local / "out", spec, targets_path=targets_path)
        publish(local / "out", out, overwrite)
        return schema, "in-memory"
    finally:
        shutil.rmtree(local, ignore_errors=True)
