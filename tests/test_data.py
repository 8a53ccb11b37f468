"""Data layer: ingestion, the prepared format, batching, the slice sampler, Pendulum, the data CLI."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mlem_ray.cli import main
from mlem_ray.data import (
    EventSequences,
    FullCollator,
    IngestSpec,
    SliceCollator,
    SliceSampler,
    gather_windows,
    prepare,
    write_prepared,
)
from mlem_ray.data import pendulum
from mlem_ray.data.schema import DataError


def hand_table():
    # ids out of order, times unsorted within id; "b" has 4 events, "a" 2, "c" 1.
    return pa.table(
        {
            "client": ["b", "a", "b", "c", "b", "a", "b"],
            "t": [3.0, 5.0, 1.0, 0.0, 2.0, 4.0, 9.0],
            "mcc": ["x", "y", "x", "z", "y", "x", "x"],
            "amount": [30.0, 50.0, 10.0, 0.0, np.nan, 40.0, 90.0],
        }
    )


def test_ingest_round_trip_exact_codes_order_and_truncation(tmp_path):
    spec = IngestSpec(id_col="client", time_col="t", cat_cols=("mcc",), num_cols=("amount",),
                      max_len=3, min_len=2, test_fraction=0.0, val_fraction=0.0)
    seqs, targets, schema = prepare(hand_table(), spec)
    write_prepared(tmp_path / "d", seqs, targets, schema)
    back = pq.read_table(tmp_path / "d" / "sequences.parquet").to_pydict()
    assert back["id"] == ["a", "b"]  # sorted ids; "c" (1 event) dropped by min_len
    assert back["length"] == [2, 3]
    # b sorted by time is t=1,2,3,9; the last 3 are kept, times relative to the first kept (t=2)
    assert back["event_time"] == [[0.0, 1.0], [0.0, 1.0, 7.0]]
    # training counts over kept events: x=3 (a@4, b@3, b@9), y=2 (a@5, b@2) -> x=2, y=3; z unseen
    assert [f.vocabulary for f in schema.categorical] == [("x", "y")]
    assert back["mcc"] == [[2, 3], [3, 2, 2]]
    assert schema.counts["sequences_dropped_short"] == 1
    assert schema.counts["events_truncated"] == 1
    amount = schema.numeric[0]
    raw = np.array(back["amount"][1], dtype=np.float64)
    assert np.isnan(raw[0])  # the NaN amount of b@2 survives as NaN
    np.testing.assert_allclose(raw[1:] * amount.scale + amount.center, [30.0, 90.0], rtol=1e-6)
    assert json.loads((tmp_path / "d" / "schema.json").read_text())["fingerprint"] == schema.fingerprint()


def test_unseen_and_rare_categories_map_to_one():
    ids = np.repeat(np.arange(200), 3)
    table = pa.table({"id": ids, "t": np.tile([0.0, 1.0, 2.0], 200), "cat": np.array(["common"] * 600, dtype=object)})
    spec = IngestSpec(id_col="id", time_col="t", cat_cols=("cat",), test_fraction=0.2, min_count=1)
    seqs, _, _ = prepare(table, spec)
    split = np.array(seqs.column("split").to_pylist())
    test_id = np.array(seqs.column("id").to_pylist())[split == "test"][0]
    train_id = np.array(seqs.column("id").to_pylist())[split == "train"][0]
    cat = np.array(["common"] * 600, dtype=object)
    cat[ids == test_id] = "only_in_test"
    cat[np.flatnonzero(ids == train_id)[0]] = "rare_in_train"
    table = table.set_column(2, "cat", pa.array(cat))
    seqs, _, schema = prepare(table, IngestSpec(id_col="id", time_col="t", cat_cols=("cat",), test_fraction=0.2, min_count=2))
    codes = dict(zip(seqs.column("id").to_pylist(), seqs.column("cat").to_pylist()))
    assert codes[test_id] == [1, 1, 1]
    assert codes[train_id][0] == 1 and codes[train_id][1:] == [2, 2]
    assert schema.categorical[0].vocabulary == ("common",)


def test_splits_are_deterministic_by_id_and_test_is_labelled():
    ids = np.repeat(np.arange(500), 2)
    table = pa.table({"id": ids, "t": np.tile([0.0, 1.0], 500)})
    targets = pa.table({"id": np.arange(0, 500, 2), "y": np.arange(250, dtype=np.float64) % 2})
    spec = IngestSpec(id_col="id", time_col="t", test_fraction=0.2, target_col="y")
    a, ta, schema = prepare(table, spec, targets)
    b, _, _ = prepare(table.take(pa.array(np.random.default_rng(0).permutation(1000))), spec, targets)
    assert a.column("split").to_pylist() == b.column("split").to_pylist()
    split = dict(zip(a.column("id").to_pylist(), a.column("split").to_pylist()))
    test_ids = [i for i, s in split.items() if s == "test"]
    assert test_ids and all(i % 2 == 0 for i in test_ids)
    assert 30 <= len(test_ids) <= 70
    assert schema.task == "binary" and schema.class_names == ("0", "1")
    assert ta.num_rows == 250


@pytest.fixture(scope="module")
def small_pendulum(tmp_path_factory):
    out = tmp_path_factory.mktemp("pend") / "p"
    assert main(["data", "pendulum", "--out", str(out), "--sequences", "1500", "--seed", "7"]) == 0
    return out


def test_pendulum_statistics_and_determinism(small_pendulum, tmp_path):
    seqs = EventSequences.open(small_pendulum)
    assert 85 <= seqs.lengths.mean() <= 93
    assert 40 <= seqs.lengths.min() and seqs.lengths.max() <= 145
    labels = seqs.targets[~np.isnan(seqs.targets)]
    assert len(labels) == len(seqs) and labels.min() > 0.5 and labels.max() < 5.0
    # x, y lie on the unit circle once de-normalised
    sch = seqs.schema
    x = seqs.nums[0] * sch.numeric[0].scale + sch.numeric[0].center
    y = seqs.nums[1] * sch.numeric[1].scale + sch.numeric[1].center
    np.testing.assert_allclose(x**2 + y**2, 1.0, atol=1e-5)
    again = tmp_path / "again"
    assert main(["data", "pendulum", "--out", str(again), "--sequences", "1500", "--seed", "7"]) == 0
    for f in ("sequences.parquet", "targets.parquet", "schema.json"):
        assert (again / f).read_bytes() == (small_pendulum / f).read_bytes()
    other = tmp_path / "other"
    assert main(["data", "pendulum", "--out", str(other), "--sequences", "1500", "--seed", "8"]) == 0
    assert (other / "sequences.parquet").read_bytes() != (small_pendulum / "sequences.parquet").read_bytes()


def test_pendulum_matches_a_tight_reference_solver():
    from scipy.integrate import solve_ivp

    rng = np.random.default_rng(1)
    th0, om0, length = rng.uniform(1, 9, 3), rng.uniform(1, 9, 3), rng.uniform(0.5, 5, 3)
    owner, t = pendulum.hawkes_times(3, rng)
    theta = pendulum.pendulum_at(t, owner, th0, om0, length)
    for i in range(3):
        ti = t[owner == i]
        ref = solve_ivp(lambda _, s: [s[1], -0.5 * s[1] - 9.81 / length[i] * np.sin(s[0])], (0, 5),
                        [th0[i], om0[i]], t_eval=ti, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(theta[owner == i], ref.y[0], atol=1e-6)


def test_collate_pads_masks_and_hides_nan(tmp_path):
    spec = IngestSpec(id_col="client", time_col="t", cat_cols=("mcc",), num_cols=("amount",), min_len=1,
                      test_fraction=0.0, val_fraction=0.0)
    write_prepared(tmp_path / "d", *prepare(hand_table(), spec))
    seqs = EventSequences.open(tmp_path / "d")
    batch = FullCollator(seqs)(np.arange(len(seqs)))  # a: 2, b: 4, c: 1 events
    assert batch.lengths.tolist() == [2, 4, 1]
    assert batch.mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert (batch.cat[~batch.mask] == 0).all() and (batch.cat[batch.mask] >= 1).all()
    # b's second event has NaN amount: masked and zeroed
    assert batch.num_mask[1, :, 0].tolist() == [True, False, True, True]
    assert batch.num[1, 1, 0].item() == 0.0 and not torch.isnan(batch.num).any()
    assert batch.dt[1].tolist() == [0.0, 1.0, 1.0, 6.0] and batch.dt[0, 2:].tolist() == [0.0, 0.0]
    window = gather_windows(seqs, np.array([1]), np.array([1]), np.array([2]))
    assert window.dt[0].tolist() == [0.0, 1.0] and window.lengths.tolist() == [2]


def test_slice_sampler_lengths_and_containment():
    lengths = np.array([5, 30, 200, 1000])
    owner, starts, lens = SliceSampler(k=5, min_len=10, max_len=100).draw(lengths, np.random.default_rng(0))
    assert owner.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    n = lengths[owner]
    assert (lens == np.minimum(lens, n)).all() and (lens[owner == 0] == 5).all()
    assert (lens[owner >= 2] >= 10).all() and (lens <= 100).all()
    assert (starts >= 0).all() and (starts + lens <= n).all()
    # many draws cover the whole allowed range
    owner, starts, lens = SliceSampler(k=2000, min_len=10, max_len=100).draw(np.array([1000]), np.random.default_rng(1))
    assert lens.min() == 10 and lens.max() == 100 and starts.max() > 850


def test_slice_collator_is_deterministic_per_epoch(small_pendulum):
    seqs = EventSequences.open(small_pendulum)
    rows = np.arange(8)
    col = SliceCollator(seqs, SliceSampler(3, 5, 20), seed=1)
    first = col(rows)
    col.set_epoch(0)
    again = col(rows)
    col.set_epoch(1)
    other = col(rows)
    assert torch.equal(first.num, again.num) and not torch.equal(first.num, other.num)
    assert first.seq_index.tolist() == np.repeat(rows, 3).tolist()
    # a sequence's slices do not depend on which batch it is in
    col.set_epoch(0)
    alone = col(rows[4:6])
    assert torch.equal(alone.num[:, : alone.num.shape[1]], first.num[12:18, : alone.num.shape[1]])


# ---------- CLI: bad input as a new user would try it ----------

def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def events_csv(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text("client,t,mcc,amount\n1,0,a,1.5\n1,1,b,2.0\n2,0,a,3.0\n2,2,a,4.0\n")
    return p


def ingest_args(events, out, *extra):
    return ["data", "ingest", "--events", str(events), "--out", str(out), "--id-col", "client",
            "--time-col", "t", "--cat-cols", "mcc", "--num-cols", "amount", *extra]


def test_cli_ingest_ok_then_refuses_a_different_dataset(events_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(ingest_args(events_csv, out)) == 0
    before = (out / "sequences.parquet").read_bytes()
    assert main(ingest_args(events_csv, out)) == 0  # the same data set again: fine, unchanged
    code, err = run_cli(ingest_args(events_csv, out, "--max-len", "1", "--min-len", "1"), capsys)
    assert code == 2 and "already holds a different prepared data set" in err and "--overwrite" in err
    assert (out / "sequences.parquet").read_bytes() == before
    assert main(ingest_args(events_csv, out, "--max-len", "1", "--min-len", "1", "--overwrite")) == 0
    assert (out / "sequences.parquet").read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize(
    "content,extra,message",
    [
        ("client,mcc,amount\n1,a,1\n", [], "no column 't'"),
        ("t,mcc,amount\n0,a,1\n", [], "no column 'client'"),
        ("client,t,mcc,amount\n1,0,a,1.5\n1,1,a,oops\n", [], "non-numeric value 'oops' at row 2"),
        ("", [], "is empty"),
        ("client,t,mcc,amount\n", [], "no rows"),
        ("client,t,mcc,amount\n1,0,a,1\n1,,a,2\n", [], "missing or non-finite"),
        ("client,t,mcc,amount\n1,0,a,1\n1,1,a,2\n", ["--max-len", "0"], "--max-len must be at least 1"),
        ("client,t,mcc,amount\n1,0,a,1\n2,1,a,2\n", ["--min-len", "5", "--max-len", "10"], "no sequence has at least"),
    ],
)
def test_cli_bad_events_exit_2_with_a_message_and_no_output(tmp_path, capsys, content, extra, message):
    events = tmp_path / "events.csv"
    events.write_text(content)
    out = tmp_path / "out"
    code, err = run_cli(ingest_args(events, out, *extra), capsys)
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_targets_matching_no_sequence(events_csv, tmp_path, capsys):
    targets = tmp_path / "targets.csv"
    targets.write_text("client,y\n77,1\n78,0\n")
    out = tmp_path / "out"
    code, err = run_cli(ingest_args(events_csv, out, "--targets", str(targets)), capsys)
    assert code == 2 and "no id of the target table matches" in err
    assert not out.exists()


def test_cli_missing_events_file(tmp_path, capsys):
    code, err = run_cli(ingest_args(tmp_path / "nope.csv", tmp_path / "out"), capsys)
    assert code == 2 and "does not exist" in err


def test_ingest_the_fields_own_sample_file(tmp_path, capsys):
    """The Age-group sample as pytorch-lifestream ships it: days, small_group codes, amounts."""
    import pathlib

    sample = pathlib.Path(__file__).resolve().parent / "fixtures" / "age_sample"  # pytorch-lifestream's fixture, Apache-2.0
    out = tmp_path / "age"
    code = main(["data", "ingest", "--events", str(sample / "transactions.csv"), "--targets", str(sample / "targets.csv"),
                 "--out", str(out), "--id-col", "client_id", "--time-col", "trans_date", "--time-unit", "days",
                 "--cat-cols", "small_group", "--num-cols", "amount_rur", "--min-len", "1"])
    assert code == 0
    seqs = EventSequences.open(out)
    assert seqs.schema.task == "multiclass" and seqs.schema.class_names == ("0", "1", "2", "3")
    assert seqs.lengths.sum() == seqs.schema.counts["events_kept"] == 1000
    assert np.isfinite(seqs.targets).sum() == seqs.schema.counts["labelled"] > 0


def test_flights_planes(tmp_path):
    out = tmp_path / "f"
    assert main(["data", "flights", "--out", str(out)]) == 0
    seqs = EventSequences.open(out)
    assert 3800 <= len(seqs) <= 4100  # 4,043 planes, 171 with a single flight left out
    assert seqs.schema.cat_names == ["origin", "dest", "carrier", "hour"]
    assert seqs.schema.task == "multiclass" and "other" in seqs.schema.class_names
    assert 3000 <= np.isfinite(seqs.targets).sum() <= 3400
    with pytest.raises(DataError):
        IngestSpec(id_col="a", time_col="b", max_len=0)


def _shards_of(table: pa.Table, cuts) -> list[pa.Table]:
    bounds = [0, *cuts, table.num_rows]
    return [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:])]


def test_sharded_data_set_reads_as_the_one_file_set(tmp_path):
    """Three shards (one written as two record batches) give the same rows, offsets, batches and
    aggregates as the same sequences in one file; the listing records each shard's size."""
    from mlem_ray.evaluation.aggregates import aggregate_features

    one = make_pendulum_set(tmp_path / "one")
    a = EventSequences.open(one)
    table = pa.ipc.open_file(pa.memory_map(str(one / "sequences.arrow"))).read_all()
    parts = _shards_of(table, [17, 40])
    parts[1] = pa.Table.from_batches(parts[1].to_batches(max_chunksize=9))  # several batches in one shard
    targets = pq.read_table(one / "targets.parquet") if (one / "targets.parquet").exists() else None
    write_prepared(tmp_path / "three", parts, targets, a.schema)
    listing = json.loads((tmp_path / "three" / "schema.json").read_text())["shards"]
    assert [s["name"] for s in listing] == ["sequences-00000", "sequences-00001", "sequences-00002"]
    assert [s["sequences"] for s in listing] == [17, 23, len(a) - 40]
    assert sum(s["events"] for s in listing) == int(a.lengths.sum())
    b = EventSequences.open(tmp_path / "three")
    assert len(b) == len(a) and b.ids.to_pylist() == a.ids.to_pylist()
    assert np.array_equal(b.offsets, a.offsets) and np.array_equal(b.lengths, a.lengths)
    assert list(b.split) == list(a.split)
    if a.targets is not None:
        assert np.array_equal(np.nan_to_num(b.targets, nan=-1), np.nan_to_num(a.targets, nan=-1))
    rows = np.array([59, 0, 16, 17, 39, 40, 25])
    for collate in (FullCollator(a, 30), SliceCollator(a, SliceSampler(3, 2, 8), seed=1)):
        other = type(collate)(b, 30) if isinstance(collate, FullCollator) else SliceCollator(b, SliceSampler(3, 2, 8), seed=1)
        x, y = collate(rows), other(rows)
        for name in ("cat", "num", "num_mask", "dt", "mask", "lengths", "seq_index"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
    fa, _ = aggregate_features(a, rows)
    fb, _ = aggregate_features(b, rows)
    assert np.array_equal(fa, fb)
    with pytest.raises(IndexError):
        b.event_time[np.array([b.num_events])]


def test_sharded_data_set_refuses_a_missing_or_foreign_shard(tmp_path):
    one = make_pendulum_set(tmp_path / "one")
    a = EventSequences.open(one)
    table = pa.ipc.open_file(pa.memory_map(str(one / "sequences.arrow"))).read_all()
    write_prepared(tmp_path / "three", _shards_of(table, [10, 30]), None, a.schema)
    shard = tmp_path / "three" / "sequences-00001.arrow"
    kept = shard.read_bytes()
    shard.write_bytes(kept[: len(kept) // 2])
    with pytest.raises(DataError, match="sequences-00001.arrow is damaged"):
        EventSequences.open(tmp_path / "three")
    other = tmp_path / "three" / "sequences-00000.arrow"
    shard.write_bytes(other.read_bytes())  # another shard's rows where this one belongs
    with pytest.raises(DataError, match="lists 20"):
        EventSequences.open(tmp_path / "three")
    shard.unlink()
    with pytest.raises(DataError, match="sequences-00001.arrow is missing"):
        EventSequences.open(tmp_path / "three")


def make_pendulum_set(path):
    from helpers import make_pendulum

    return make_pendulum(path, sequences=60, seed=3)
