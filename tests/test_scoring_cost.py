"""Scoring at a bounded cost: the rows a downstream score uses (evaluation/subsets.py), the
aggregates and `embed --out` computed in chunks."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlem_ray.data import prepare, write_prepared
from mlem_ray.data.ingest import IngestSpec
from mlem_ray.data.prepared import EventSequences
from mlem_ray.evaluation import subsets
from mlem_ray.evaluation.aggregates import aggregate_features


def binary_events(n: int, positive_share: float, seed: int = 0):
    """n sequences of 3 to 25 events (a code and an amount each) and a 0/1 target per sequence;
    the amount's mean depends on the target, so a probe has something to learn."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 26, n)
    target = (rng.random(n) < positive_share).astype(np.int64)
    owner = np.repeat(np.arange(n), lengths)
    events = pa.table({
        "id": owner, "t": rng.random(len(owner)) * 100.0,
        "shop": rng.choice(["a", "b", "c", "d"], len(owner)),
        "amount": rng.normal(target[owner].astype(float), 1.0),
    })
    return events, pa.table({"id": np.arange(n), "target": target})


def make_binary(path, n=3000, positive_share=0.2, shards=1, seed=0):
    events, targets = binary_events(n, positive_share, seed)
    spec = IngestSpec(id_col="id", time_col="t", cat_cols=("shop",), num_cols=("amount",), target_col="target",
                      task="binary", test_fraction=0.2, seed=seed)
    table, target_table, schema = prepare(events, spec, targets)
    if shards > 1:  # the same sequences cut into consecutive shards
        cuts = np.linspace(0, table.num_rows, shards + 1).astype(int)
        table = [table.slice(a, b - a) for a, b in zip(cuts[:-1], cuts[1:])]
    write_prepared(path, table, target_table, schema)
    return path


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return EventSequences.open(make_binary(tmp_path_factory.mktemp("bin") / "d"))


def test_probe_subset_holds_no_test_id_is_stratified_and_fixed(binary):
    pool = binary.labelled("train", "val")
    rows = subsets.probe_rows(binary, 500)
    assert len(rows) == 500 and np.all(np.diff(rows) > 0)
    assert set(binary.split[rows]) <= {"train", "val"} and np.isin(rows, pool).all()
    assert not np.isin(rows, binary.indices("test")).any()
    # stratified: the positive share of the subset is the pool's to within one row
    pool_share = binary.targets[pool].mean()
    assert abs(binary.targets[rows].sum() - 500 * pool_share) <= 1.0
    # fixed: the same rows on every call and from a freshly opened copy of the data set
    np.testing.assert_array_equal(rows, subsets.probe_rows(binary, 500))
    np.testing.assert_array_equal(rows, subsets.probe_rows(EventSequences.open(binary.path), 500))
    # a cap at or above the pool, or 0, takes the whole pool
    np.testing.assert_array_equal(subsets.probe_rows(binary, 0), pool)
    np.testing.assert_array_equal(subsets.probe_rows(binary, len(pool) + 10), pool)


def test_test_subset_is_test_rows_only_and_stratified(binary):
    test = binary.labelled("test")
    rows = subsets.test_rows(binary, 200)
    assert len(rows) == 200 and np.isin(rows, test).all()
    assert abs(binary.targets[rows].sum() - 200 * binary.targets[test].mean()) <= 1.0
    both = subsets.scoring_rows(binary, 500, 200)
    assert len(both) == 700 and np.all(np.diff(both) > 0)
    quality = subsets.quality_rows(binary, 300)
    assert len(quality) == 300 and len(np.unique(quality)) == 300


def test_a_rare_class_keeps_a_row():
    rows = np.arange(1000)
    labels = np.r_[np.zeros(998), np.ones(2)]
    pick = subsets.stratified_sample(rows, labels, 100, np.random.default_rng(0))
    assert (labels[pick] == 1).sum() >= 1 and abs(len(pick) - 100) <= 1


def test_evaluator_scores_every_trial_and_the_baseline_on_the_same_rows(tmp_path, monkeypatch, binary):
    """Every probe fit of two trials' scorings and of the aggregates baseline sees the same rows
    (told apart by their targets and splits) and n_train / n_test are the caps."""
    from mlem_ray.config import make_config
    from mlem_ray.evaluation import aggregates, evaluate, leaderboard, probes
    from mlem_ray.evaluation.actor import Evaluator
    from mlem_ray.evaluation.trial import TrialRecord
    from mlem_ray.training import LocalReporter, train

    cfg = make_config("coles", {"data.path": str(binary.path), "model.hidden": 8, "data.batch_size": 16,
                                "data.slice_min": 2, "data.slice_max": 10, "train.epochs": 1, "train.budget_steps": 2})
    train(cfg, LocalReporter(tmp_path / "run", stream=None))
    seen = []

    def spy(x, targets, split, *args, **kwargs):
        seen.append((len(x), np.asarray(targets).copy(), np.asarray(split).copy()))
        return probes.probe(x, targets, split, *args, **kwargs)

    monkeypatch.setattr(evaluate, "probe", spy)
    monkeypatch.setattr(aggregates, "probe", spy)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    ev = Evaluator(sweep, binary.path, folds=2, tree_iters=5, probe_size=400, test_size=150, quality_size=300)
    rows = [ev.score(TrialRecord(t, "s", "coles", str(tmp_path / "run" / "last"))) for t in ("a", "b")]
    assert all(r["status"] == leaderboard.OK for r in rows)
    assert len(seen) == 2 * 3 + 2  # per trial: tree, linear, embedding + aggregates; baseline: tree, linear
    n, targets, split = seen[0]
    assert n == 550 and (split == "test").sum() == 150
    for other in seen[1:]:
        assert other[0] == n
        np.testing.assert_array_equal(other[1], targets)
        np.testing.assert_array_equal(other[2], split)
    base = leaderboard.read_baseline(sweep)
    for scored in (*rows, base):
        assert (scored["n_train"], scored["n_test"]) == (400, 150)
    assert rows[0]["n_quality"] == 300


def test_chunked_aggregates_equal_one_pass(tmp_path, binary):
    rows = np.sort(np.random.default_rng(1).choice(len(binary), 700, replace=False))
    whole, names = aggregate_features(binary, rows, chunk=10**9)
    for chunk in (1, 7, 256):
        part, same = aggregate_features(binary, rows, chunk=chunk)
        assert same == names
        np.testing.assert_array_equal(part, whole)
    # a sharded copy of the same sequences gives the same features
    sharded = EventSequences.open(make_binary(tmp_path / "s", shards=3))
    assert len(sharded.schema.shards) == 3
    np.testing.assert_array_equal(aggregate_features(sharded, rows, chunk=100)[0], whole)


def test_chunked_embed_file_equals_one_shot_values(tmp_path, binary):
    from mlem_ray.cli import main
    from mlem_ray.config import make_config
    from mlem_ray.evaluation.embed import embed_rows, write_embeddings
    from mlem_ray.training import LocalReporter, train
    from mlem_ray.training.checkpoint import load_encoder

    cfg = make_config("coles", {"data.path": str(binary.path), "model.hidden": 8, "data.batch_size": 16,
                                "data.slice_min": 2, "data.slice_max": 10, "train.epochs": 1, "train.budget_steps": 2})
    train(cfg, LocalReporter(tmp_path / "run", stream=None))
    encoder, ckpt = load_encoder(tmp_path / "run" / "best", binary.schema)
    rows = binary.indices()
    one_shot = embed_rows(encoder, binary, rows, binary.schema.max_len)
    out = tmp_path / "e.parquet"
    dims, finite = write_embeddings(encoder, binary, rows, binary.schema.max_len, out, chunk=700)
    assert (dims, finite) == (8, True)
    meta = pq.ParquetFile(out).metadata
    assert meta.num_row_groups == -(-len(rows) // 700) and meta.num_rows == len(rows)
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert table.column("id").to_pylist() == binary.ids.to_pylist()
    np.testing.assert_allclose(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), one_shot,
                               rtol=0, atol=1e-6)
    assert not list(tmp_path.glob(".e.parquet.tmp-*"))  # the temp sibling was renamed into place
    # the CLI writes the same file (default chunk) with the same values
    cli_out = tmp_path / "cli.parquet"
    assert main(["embed", "--data", str(binary.path), "--checkpoint", str(tmp_path / "run" / "best"),
                 "--out", str(cli_out)]) == 0
    np.testing.assert_allclose(np.stack(pq.read_table(cli_out).column("embedding").to_numpy(zero_copy_only=False)),
                               one_shot, rtol=0, atol=1e-6)


def test_evaluate_refuses_a_negative_cap(tmp_path, binary, capsys):
    from mlem_ray.cli import main

    code = main(["evaluate", "--data", str(binary.path), "--checkpoint", str(tmp_path / "none"), "--probe-size", "-1"])
    assert code == 2 and "--probe-size must be 0 (no cap)" in capsys.readouterr().err


def test_released_pages_read_back_the_same_values(binary):
    from mlem_ray.evaluation import mapped_pages

    everything = np.arange(binary.num_events)
    before = binary.take(everything)
    assert mapped_pages.release(binary.path) > 0  # the data set's files are mapped, and were advised
    after = binary.take(everything)
    np.testing.assert_array_equal(after.time, before.time)
    for a, b in zip(after.cats + after.nums, before.cats + before.nums):
        np.testing.assert_array_equal(a, b)
    assert mapped_pages.release(binary.path / "no_such_dir") == 0
