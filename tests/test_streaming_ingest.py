"""Streaming ingest (data/streaming.py) against the in-memory path (data/ingest.py): the same
sequences, codes, vocabularies, statistics, splits, targets and counts on a table split over
files in shuffled order; rows differ only in their order (by shard)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mlem_ray.data.ingest import IngestSpec, ingest
from mlem_ray.data.prepared import EventSequences
from mlem_ray.data.streaming import stream_ingest

SPEC = IngestSpec(id_col="client", time_col="t", cat_cols=("mcc", "chan"), num_cols=("amount", "bal"),
                  max_len=30, min_len=3, test_fraction=0.2, min_count=2, target_col="y", seed=3)


def event_table(n_ids=300, seed=0, text_ids=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, n_ids)  # some shorter than min_len, some past max_len
    n = int(lengths.sum())
    ids = np.repeat(np.arange(n_ids) * 7 + 1000, lengths)
    t = rng.integers(0, 50, n).astype(np.float64)  # ties within a sequence: file order decides
    amount = rng.lognormal(2, 1, n)
    amount[rng.random(n) < 0.05] = np.nan
    return pa.table({
        "client": pa.array(ids.astype(str)) if text_ids else pa.array(ids),
        "t": t,
        "mcc": rng.zipf(1.5, n) % 40,
        "chan": pa.array(np.array(["web", "pos", "atm", "app", "rare"])[np.minimum(rng.poisson(1.0, n), 4)]),
        "amount": amount,
        "bal": rng.normal(0, 3, n),
        "row": np.arange(n),  # the order the in-memory path reads; not a field
    })


def target_table(events, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.unique(events.column("client").to_numpy(zero_copy_only=False))
    ids = ids[rng.random(len(ids)) < 0.7]
    y = rng.integers(0, 2, len(ids)).astype(np.float64)
    y[:5] = np.nan  # no target: unlabelled
    extra = np.array([9_999_991, 9_999_992]) if ids.dtype.kind in "iu" else np.array(["nope1", "nope2"])
    return pa.table({"client": np.concatenate([ids, extra]), "y": np.concatenate([y, [0.0, 1.0]])})


def write_shuffled_parts(table, directory, parts=3, fmt="parquet", seed=1):
    """Rows shuffled, split over `parts` files; returns the table in the order the files are read."""
    rng = np.random.default_rng(seed)
    shuffled = table.take(pa.array(rng.permutation(table.num_rows)))
    directory.mkdir()
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for i in range(parts):
        piece = shuffled.slice(bounds[i], bounds[i + 1] - bounds[i])
        if fmt == "parquet":
            pq.write_table(piece, directory / f"part-{i}.parquet")
        else:
            pacsv.write_csv(piece, directory / f"part-{i}.csv")
    return shuffled


def by_id(path):
    """A data set's content, rows by id: {id: {column: values}} + its targets + schema minus shards."""
    seqs = EventSequences.open(path)
    table = pa.concat_tables([pq.read_table(path / f"{s['name']}.parquet") for s in seqs.schema.shards])
    rows = {r["id"]: r for r in table.to_pylist()}
    targets = {}
    if (path / "targets.parquet").exists():
        targets = dict(zip(*pq.read_table(path / "targets.parquet").to_pydict().values()))
    schema = json.loads((path / "schema.json").read_text())
    schema.pop("shards"), schema.pop("source")
    return rows, targets, schema


def assert_same_content(a, b):
    rows_a, targets_a, schema_a = by_id(a)
    rows_b, targets_b, schema_b = by_id(b)
    assert schema_a == schema_b
    assert rows_a.keys() == rows_b.keys()
    for k in rows_a:
        ra, rb = rows_a[k], rows_b[k]
        assert ra.keys() == rb.keys()
        for col in ra:
            if col in ("amount", "bal"):
                np.testing.assert_array_equal(np.array(ra[col], dtype=np.float32), np.array(rb[col], dtype=np.float32))
            else:
                assert ra[col] == rb[col], (k, col)
    assert targets_a.keys() == targets_b.keys()
    assert all(targets_a[k] == targets_b[k] for k in targets_a)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_streaming_equals_in_memory_on_three_shuffled_files(tmp_path, fmt):
    events = event_table(text_ids=False)
    shuffled = write_shuffled_parts(events, tmp_path / "parts", fmt=fmt)
    targets = target_table(events)
    pq.write_table(targets, tmp_path / "targets.parquet")
    one_file = tmp_path / "all.parquet"
    pq.write_table(shuffled if fmt == "parquet" else pacsv.read_csv(_csv_of(shuffled, tmp_path),
                   convert_options=pacsv.ConvertOptions(column_types={"client": pa.string()})), one_file)
    ingest(one_file, tmp_path / "mem", SPEC, targets_path=tmp_path / "targets.parquet")
    schema = stream_ingest(tmp_path / "parts", tmp_path / "stream", SPEC, targets_path=tmp_path / "targets.parquet",
                           n_buckets=4)
    assert len(schema.shards) == 4
    mem = json.loads((tmp_path / "mem" / "schema.json").read_text())
    assert mem["counts"]["events_truncated"] > 0 and mem["counts"]["sequences_dropped_short"] > 0
    assert mem["counts"]["test"] > 0 and mem["counts"]["targets_unused"] > 0
    assert_same_content(tmp_path / "mem", tmp_path / "stream")
    # the in-memory path reads the three files too, by glob
    ingest(str(tmp_path / "parts" / f"part-*.{fmt}"), tmp_path / "mem-glob", SPEC, targets_path=tmp_path / "targets.parquet")
    assert_same_content(tmp_path / "mem", tmp_path / "mem-glob")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # spill and temp dirs removed


def test_two_worker_processes_give_the_same_content(tmp_path):
    events = event_table(seed=7)
    shuffled = events.take(pa.array(np.random.default_rng(0).permutation(events.num_rows)))
    pq.write_table(shuffled, tmp_path / "e.parquet", row_group_size=1000)  # one file read as 4 runs of row groups
    pq.write_table(target_table(events, seed=7), tmp_path / "targets.parquet")
    for workers in (1, 2):
        stream_ingest(tmp_path / "e.parquet", tmp_path / f"w{workers}", SPEC, targets_path=tmp_path / "targets.parquet",
                      n_buckets=5, workers=workers)
    assert_same_content(tmp_path / "w1", tmp_path / "w2")
    assert ([p.read_bytes() for p in sorted((tmp_path / "w1").iterdir())]
            == [p.read_bytes() for p in sorted((tmp_path / "w2").iterdir())])  # byte for byte


def _csv_of(table, tmp_path):
    path = tmp_path / "all.csv"
    pacsv.write_csv(table, path)
    return path


def test_csv_ids_keep_their_text_in_both_paths(tmp_path):
    csv = tmp_path / "e.csv"
    csv.write_text("client,t,mcc\n007,0,a\n007,1,b\n7,0,a\n7,1,a\n0042,2,b\n42,3,b\n42,4,a\n0042,5,a\n")
    spec = IngestSpec(id_col="client", time_col="t", cat_cols=("mcc",), min_len=2)
    ingest(csv, tmp_path / "mem", spec)
    stream_ingest(csv, tmp_path / "stream", spec, n_buckets=3)
    for d in ("mem", "stream"):
        seqs = EventSequences.open(tmp_path / d)
        assert sorted(seqs.ids.to_pylist()) == ["0042", "007", "42", "7"]
        assert seqs.num_events == 8


def test_statistics_are_exact_whatever_the_bucket_count_row_order_or_refinement_rounds(tmp_path):
    events = event_table(n_ids=200)
    rng = np.random.default_rng(2)
    # distinct times: with ties, the row order decides which event comes first (in both paths)
    events = events.set_column(1, "t", pa.array(rng.permutation(events.num_rows) * 1.0))
    # a field whose quartiles sit among many equal values: its bins need refining to single keys
    events = events.append_column("ties", pa.array(np.where(rng.random(events.num_rows) < 0.4, 0.0,
                                                            np.round(rng.normal(0, 2, events.num_rows), 1))))
    pq.write_table(events, tmp_path / "a.parquet")
    pq.write_table(events.take(pa.array(rng.permutation(events.num_rows))), tmp_path / "b.parquet")
    spec = IngestSpec(id_col="client", time_col="t", num_cols=("amount", "bal", "ties"), max_len=30, min_len=3)
    mem = ingest(tmp_path / "a.parquet", tmp_path / "mem", spec)
    # values_cap=1: every bin is refined by histograms down to one key (4 rounds) instead of fetched
    for n_buckets, table, values_cap in ((1, "a", 1), (5, "b", 1), (5, "a", 1 << 20), (3, "b", 50)):
        s = stream_ingest(tmp_path / f"{table}.parquet", tmp_path / f"o{n_buckets}{table}{values_cap}", spec,
                          n_buckets=n_buckets, values_cap=values_cap)
        assert s.numeric == mem.numeric, (n_buckets, table, values_cap)  # bit for bit, as np.percentile


def test_an_existing_data_set_is_left_intact_when_streaming_fails(tmp_path):
    events = event_table(n_ids=50)
    pq.write_table(events, tmp_path / "e.parquet")
    spec = IngestSpec(id_col="client", time_col="t", cat_cols=("mcc",), num_cols=("amount",))
    stream_ingest(tmp_path / "e.parquet", tmp_path / "out", spec, n_buckets=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    bad = events.set_column(events.schema.get_field_index("amount"), "amount",
                            pa.array(np.where(np.arange(events.num_rows) == 7, 1e300, np.arange(events.num_rows) * 1.0)))
    pq.write_table(bad, tmp_path / "bad.parquet")
    from mlem_ray.errors import DataError
    with pytest.raises(DataError, match="float32"):
        stream_ingest(tmp_path / "bad.parquet", tmp_path / "out", spec, n_buckets=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
