"""The prepared data set on disk (docs/design.md) and its memory-mapped reader.

A directory holding:
- the sequences, one row per sequence: id, split (train/val/test), length, event_time (list,
  relative to the sequence's first event, in the schema's time unit) and one list column per field
  (categorical codes int32, normalised numerics float32 with NaN for missing). They are kept as one
  or more shards, each twice: ``<name>.arrow``, an uncompressed Arrow IPC file that training
  memory-maps (so a data set larger than RAM still trains; Parquet must be decoded into memory),
  and ``<name>.parquet``, the same rows compressed, for other tools. A data set written in one piece
  has the single shard ``sequences``; a streaming or cluster-wide ingest writes ``sequences-00000``,
  ``sequences-00001``, ... The shards are listed, in row order, in ``schema.json``;
- ``targets.parquet`` (when there are targets): id, target;
- ``schema.json``: fields, vocabularies, normaliser statistics, time unit, task, counts, shards.
The directory is written to a temporary sibling and renamed into place, so a reader never sees a
half-written data set and a failed write never damages an existing one.

A reader sees one data set whatever the number of shards: row ``i`` is the i-th sequence over the
shards in listed order, and an event column is indexed by global event positions
(``offsets[i] + k`` is the k-th event of row ``i``). Only the per-sequence columns (id, split,
length) are read when a data set is opened; event values stay in the memory-mapped files until a
batch gathers them.
"""
from __future__ import annotations

import filecmp
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from .schema import DataError, Schema

RESERVED_COLUMNS = ("id", "split", "length", "event_time")
SPLITS = ("train", "val", "test")
SINGLE_SHARD = "sequences"  # the shard of a data set written in one piece


def shard_name(i: int) -> str:
    """The i-th shard of a sharded data set (files ``<name>.arrow`` and ``<name>.parquet``)."""
    return f"sequences-{i:05d}"


def _dataset_files(path: Path) -> list[str]:
    names = ["schema.json", "targets.parquet"]
    try:
        listing = json.loads((path / "schema.json").read_text()).get("shards") or []
        names += [f"{s['name']}{ext}" for s in listing for ext in (".arrow", ".parquet")]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        names += [f"{SINGLE_SHARD}.arrow", f"{SINGLE_SHARD}.parquet"]
    return names


def _same_dataset(a: Path, b: Path) -> bool:
    names = set(_dataset_files(a)) | set(_dataset_files(b))
    names = [f for f in names if (a / f).exists() or (b / f).exists()]
    return all((a / f).exists() and (b / f).exists() and filecmp.cmp(a / f, b / f, shallow=False) for f in names)


def shard_entry(name: str, table: pa.Table, schema: Schema) -> dict:
    """What ``schema.json`` records of a shard: its rows and events (a reader checks the file
    against them) and each categorical field's largest code (checked against the vocabulary
    without reading the events)."""
    code_max = {}
    for f in schema.cat_names:
        m = pc.max(pc.list_flatten(table.column(f))).as_py() if table.num_rows else None
        code_max[f] = int(m) if m is not None else -1
    events = int(pc.sum(table.column("length")).as_py() or 0) if table.num_rows else 0
    return {"name": name, "sequences": table.num_rows, "events": events, "code_max": code_max}


def write_shard(directory: Path, name: str, table: pa.Table) -> None:
    """One shard's two files. Fixed writer settings so the same input and seed give byte-identical
    files. No dictionary pages: on list columns of floats and codes they cost 30 % of the write (the
    largest part of ingest) and made the file 7 % larger (1M events: 0.238 -> 0.169 s, 16.4 -> 15.3 MiB)."""
    pq.write_table(table, directory / f"{name}.parquet", compression="zstd", write_statistics=False,
                   use_dictionary=False)
    with ipc.new_file(directory / f"{name}.arrow", table.schema) as writer:
        writer.write_table(table)


def write_prepared(out, sequences: pa.Table | list[pa.Table], targets: pa.Table | None, schema: Schema,
                   overwrite=False) -> Path:
    """Write atomically: one table as the single shard, a list of tables as numbered shards. An
    existing non-empty directory is replaced only with ``overwrite`` (or left alone when it already
    holds exactly this data set)."""
    with PreparedWriter(out, overwrite=overwrite) as writer:
        if isinstance(sequences, pa.Table):
            writer.add_shard(sequences, schema, name=SINGLE_SHARD)
        else:
            for table in sequences:
                writer.add_shard(table, schema)
        return writer.finish(schema, targets)


class PreparedWriter:
    """Writes a prepared data set shard by shard into a temporary sibling of ``out`` and renames it
    into place on ``finish``; leaving the ``with`` block without ``finish`` (an error, a kill)
    leaves ``out`` as it was.

    >>> # with PreparedWriter(out) as w:
    >>> #     for table in tables: w.add_shard(table, schema)
    >>> #     w.finish(schema, targets)
    """

    def __init__(self, out, overwrite: bool = False):
        self.out, self.overwrite = Path(out), overwrite
        self.shards: list[dict] = []
        self.tmp: Path | None = None

    def __enter__(self) -> PreparedWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"--out {self.out} is a file, not a directory")
        from ..outputs import remove_stale, temp_name

        remove_stale(self.out)  # temporaries of a killed earlier write into the same place
        self.tmp = Path(tempfile.mkdtemp(prefix=temp_name(self.out.name), dir=self.out.parent))
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def directory(self) -> Path:
        """The temporary directory being written (for a caller that writes shards itself)."""
        return self.tmp

    def add_shard(self, table: pa.Table, schema: Schema, name: str | None = None) -> dict:
        name = name or shard_name(len(self.shards))
        write_shard(self.tmp, name, table)
        entry = shard_entry(name, table, schema)
        self.shards.append(entry)
        return entry

    def add_written_shard(self, entry: dict) -> None:
        """A shard whose files a caller (a Ray task, say) wrote into ``directory`` itself."""
        self.shards.append(entry)

    def finish(self, schema: Schema, targets: pa.Table | None) -> Path:
        out, tmp = self.out, self.tmp
        if targets is not None:
            pq.write_table(targets, tmp / "targets.parquet", compression="zstd", write_statistics=False)
        schema = schema.with_shards(self.shards)
        (tmp / "schema.json").write_text(schema.to_json())
        if out.exists() and any(out.iterdir()):
            if _same_dataset(out, tmp):
                return out
            if not self.overwrite:
                what = "a different prepared data set" if (out / "schema.json").exists() else "other files"
                raise DataError(f"--out {out} already holds {what}; pass --overwrite to replace it or pick another directory")
            from ..outputs import temp_name

            trash = out.with_name(temp_name(out.name, "old") + "0")
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        return out


class EventColumn:
    """One event field over several memory-mapped parts (a part is one record batch of one shard),
    indexed by global event position like a flat numpy array: ``column[idx]`` for an integer array
    of any shape -> a numpy array of that shape. A one-part data set hands out the part's numpy
    array itself instead, so this class only costs where there are shards."""

    def __init__(self, parts: list[np.ndarray], starts: np.ndarray):
        self.parts, self.starts = parts, starts  # starts: (P + 1,) first global position of each part, then the total
        self.dtype = parts[0].dtype if parts else np.dtype(np.float32)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError("an event column is indexed by integer arrays of global event positions")
        return self.take(locate(self.starts, idx))

    def take(self, where: EventLocation) -> np.ndarray:
        out = np.empty(where.shape, dtype=self.dtype)
        flat = out.reshape(-1)
        for p, lo, hi in where.runs:
            sel = where.order[lo:hi]
            flat[sel] = self.parts[p][where.local[sel]]
        return out


class EventLocation(NamedTuple):
    """Global event positions resolved to parts once, for several columns to gather from."""

    shape: tuple
    order: np.ndarray  # flat positions grouped by part
    local: np.ndarray  # flat, position within its part
    runs: list  # (part, lo, hi): order[lo:hi] lie in part


def locate(starts: np.ndarray, idx: np.ndarray) -> EventLocation:
    flat = idx.reshape(-1).astype(np.int64, copy=False)
    if len(flat) and (flat.min() < 0 or flat.max() >= starts[-1]):
        raise IndexError(f"event position out of range [0, {int(starts[-1])})")
    part = np.searchsorted(starts, flat, side="right") - 1
    order = np.argsort(part, kind="stable")
    sorted_part = part[order]
    bounds = np.flatnonzero(np.diff(sorted_part)) + 1
    lo = np.concatenate([[0], bounds])
    hi = np.concatenate([bounds, [len(flat)]])
    runs = [(int(sorted_part[a]), int(a), int(b)) for a, b in zip(lo, hi) if b > a]
    return EventLocation(idx.shape, order, flat - starts[part], runs)


class Events(NamedTuple):
    """The values at some event positions, each array of the positions' shape."""

    time: np.ndarray  # float64
    cats: tuple  # per categorical field, int32
    nums: tuple  # per numeric field, float32


def _read_shard(path: Path, name: str, entry: dict | None, schema: Schema) -> pa.Table:
    file = path / f"{name}.arrow"
    if not file.exists():
        raise DataError(f"{file} is missing; the data set is incomplete: re-run `mlem-ray data` to prepare it")
    try:
        table = ipc.open_file(pa.memory_map(str(file), "r")).read_all()  # zero-copy views of the file
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{file} is damaged or not an Arrow file ({str(e).splitlines()[0][:160]}); "
                        "re-run `mlem-ray data` to prepare it") from None
    need = {"id": None, "split": None, "length": "integer", "event_time": "float"}
    need.update({f: "integer" for f in schema.cat_names})
    need.update({f: "float" for f in schema.num_names})
    for col, kind in need.items():
        if col not in table.column_names:
            raise DataError(f"{file} has no column {col!r} that its schema.json names: "
                            "it belongs to another data set; re-run `mlem-ray data` to prepare it")
        if kind is None:
            continue
        t = table.schema.field(col).type
        value_type = t.value_type if pa.types.is_list(t) or pa.types.is_large_list(t) else t
        ok = pa.types.is_integer(value_type) if kind == "integer" else pa.types.is_floating(value_type)
        if col != "length" and not (pa.types.is_list(t) or pa.types.is_large_list(t)):
            ok = False
        if not ok:
            raise DataError(f"{file}: column {col!r} has type {t}, not a list of {kind}s; re-run `mlem-ray data`")
    if entry is not None and (table.num_rows != entry.get("sequences")):
        raise DataError(f"{file} holds {table.num_rows} sequences where schema.json lists {entry.get('sequences')}: "
                        "it belongs to another data set or was cut short; re-run `mlem-ray data` to prepare it")
    if entry is not None and "events" in entry:
        events = int(pc.sum(table.column("length")).as_py() or 0) if table.num_rows else 0
        if events != entry["events"]:
            raise DataError(f"{file} holds {events} events where schema.json lists {entry['events']}: "
                            "it belongs to another data set; re-run `mlem-ray data` to prepare it")
    return table


@dataclass
class EventSequences:
    """A prepared data set, memory-mapped, one or more shards seen as one.

    Per-sequence arrays are in memory (N entries each); event columns (``event_time``, ``cats[j]``,
    ``nums[j]``) are flat numpy arrays for a one-shard set and `EventColumn`s over the shards
    otherwise: index either with integer arrays of global event positions, or call `take` to
    resolve the positions once for every column. Sequence i spans ``offsets[i]:offsets[i] + lengths[i]``."""

    path: Path
    schema: Schema
    ids: pa.Array
    split: np.ndarray  # (N,) str
    lengths: np.ndarray  # (N,) int64
    offsets: np.ndarray  # (N,) int64, global position of each sequence's first event
    event_time: np.ndarray | EventColumn  # (E,) float64
    cats: tuple  # per categorical field, (E,) int32 codes
    nums: tuple  # per numeric field, (E,) float32, NaN where missing
    targets: np.ndarray | None  # (N,) float64, NaN where unlabelled
    event_starts: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))  # (P + 1,) parts' first events

    @classmethod
    def open(cls, path) -> EventSequences:
        """`path`: a directory, or a storage URI (copied once per node into a local cache keyed by
        its content, and memory-mapped from there)."""
        from .. import storage

        try:
            path = storage.local_copy(path, by_content=True)  # a plain path as it is
        except (OSError, storage.StorageError) as e:
            raise DataError(f"--data {path}: cannot read it ({str(e).splitlines()[0][:200]})") from None
        path = Path(path)
        schema = Schema.load(path)
        listing = list(schema.shards) or [None]
        tables = [_read_shard(path, e["name"] if e else SINGLE_SHARD, e, schema) for e in listing]
        seqs = cls.from_tables(path, schema, tables)
        seqs._check_codes(listing, tables)
        return seqs

    @classmethod
    def from_table(cls, path, schema: Schema, table: pa.Table) -> EventSequences:
        return cls.from_tables(path, schema, [table])

    @classmethod
    def from_tables(cls, path, schema: Schema, tables: list[pa.Table]) -> EventSequences:
        """Shards (tables, in row order) -> one data set; no event values are copied."""
        batches = [b for t in tables for b in t.to_batches() if b.num_rows]
        time_offsets, event_starts = [], [0]
        for b in batches:
            off = b.column(b.schema.get_field_index("event_time")).offsets.to_numpy().astype(np.int64)
            time_offsets.append(off[:-1] - off[0] + event_starts[-1])
            event_starts.append(event_starts[-1] + int(off[-1] - off[0]))
        event_starts = np.asarray(event_starts, dtype=np.int64)

        def column(name, dtype):
            parts = []
            for b in batches:
                lists = b.column(b.schema.get_field_index(name))
                values = lists.values.slice(lists.offsets[0].as_py(), lists.offsets[-1].as_py() - lists.offsets[0].as_py())
                parts.append(values.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
            if len(parts) == 1:
                return parts[0]
            if not parts:
                return np.zeros(0, dtype)
            return EventColumn(parts, event_starts)

        def per_sequence(name):
            chunks = [b.column(b.schema.get_field_index(name)) for b in batches]
            return pa.chunked_array(chunks, type=tables[0].schema.field(name).type if tables else pa.int64())

        ids = per_sequence("id").combine_chunks() if batches else pa.array([], pa.int64())
        split_col = per_sequence("split") if batches else pa.chunked_array([], pa.string())
        # Through a dictionary: one Python string per split name, not one per sequence.
        encoded = pc.dictionary_encode(split_col).combine_chunks() if len(split_col) else None
        split = (np.asarray(encoded.dictionary.to_pylist(), dtype=object)[encoded.indices.to_numpy()]
                 if encoded is not None else np.array([], dtype=object))
        lengths = (per_sequence("length").to_numpy().astype(np.int64) if batches else np.zeros(0, np.int64))
        offsets = np.concatenate(time_offsets) if time_offsets else np.zeros(0, np.int64)
        targets = None
        tpath = Path(path) / "targets.parquet"
        if tpath.exists():
            targets = _read_targets(tpath, ids)
        return cls(path=Path(path), schema=schema, ids=ids, split=split, lengths=lengths, offsets=offsets,
                   event_time=column("event_time", np.float64),
                   cats=tuple(column(f, np.int32) for f in schema.cat_names),
                   nums=tuple(column(f, np.float32) for f in schema.num_names),
                   targets=targets, event_starts=event_starts)

    def _check_codes(self, listing: list, tables: list[pa.Table]) -> None:
        """Stored codes against the vocabulary: the listing's recorded maxima where present (no
        event is read), else the codes themselves (data sets written before shards were listed)."""
        for f in self.schema.categorical:
            recorded = [e.get("code_max", {}).get(f.name) if e else None for e in listing]
            if any(m is None for m in recorded):
                recorded = [pc.max(pc.list_flatten(t.column(f.name))).as_py() if t.num_rows else -1 for t in tables]
            top = max([m for m in recorded if m is not None] or [-1])
            if top >= f.num_codes:
                raise DataError(f"{self.path / 'schema.json'}: field {f.name!r} has {f.num_codes} codes in its "
                                f"vocabulary but the sequences store code {top}: "
                                "schema.json does not belong to these sequences; "
                                "re-run `mlem-ray data` to prepare it")

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_events(self) -> int:
        return int(self.event_starts[-1])

    def take(self, event_index: np.ndarray) -> Events:
        """Every field's values at some global event positions (an integer array of any shape)."""
        event_index = np.asarray(event_index, dtype=np.int64)
        if len(self.event_starts) <= 2:
            return Events(self.event_time[event_index], tuple(c[event_index] for c in self.cats),
                          tuple(v[event_index] for v in self.nums))
        where = locate(self.event_starts, event_index)
        return Events(self.event_time.take(where), tuple(c.take(where) for c in self.cats),
                      tuple(v.take(where) for v in self.nums))

    def indices(self, *splits: str) -> np.ndarray:
        """Row indices of the sequences in the given splits (all when none given)."""
        if not splits:
            return np.arange(len(self))
        for s in splits:
            if s not in SPLITS:
                raise ValueError(f"unknown split {s!r}")
        return np.flatnonzero(np.isin(self.split, splits))

    def labelled(self, *splits: str) -> np.ndarray:
        idx = self.indices(*splits)
        if self.targets is None:
            return idx[:0]
        return idx[~np.isnan(self.targets[idx])]


def _read_targets(tpath: Path, ids: pa.Array) -> np.ndarray:
    try:
        t = pq.read_table(tpath)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{tpath} is damaged or not a Parquet file ({str(e).splitlines()[0][:160]}); "
                        "re-run `mlem-ray data` to prepare it") from None
    if "id" not in t.column_names or "target" not in t.column_names:
        raise DataError(f"{tpath} needs columns 'id' and 'target'; re-run `mlem-ray data` to prepare it")
    pos = pc.index_in(t.column("id"), value_set=ids).to_numpy(zero_copy_only=False)
    ok = ~np.isnan(pos.astype(np.float64))
    targets = np.full(len(ids), np.nan)
    try:
        targets[pos[ok].astype(np.int64)] = t.column("target").to_numpy(zero_copy_only=False)[ok]
    except (TypeError, ValueError):
        raise DataError(f"{tpath}: column 'target' is not numeric; re-run `mlem-ray data` to prepare it") from None
    return targets
