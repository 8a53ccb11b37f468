"""A 3-shard data set (streaming ingest's output) trains, resumes exactly, evaluates and embeds
through the CLI, as a one-piece set does."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlem_ray.cli import main
from mlem_ray.data.ingest import IngestSpec
from mlem_ray.data.prepared import EventSequences
from mlem_ray.data.streaming import stream_ingest

SMALL = {"model.hidden": 16, "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20,
         "train.steps_per_epoch": 3}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 60, 240)
    n = int(lengths.sum())
    ids = np.repeat(np.arange(240), lengths)
    pq.write_table(pa.table({"client": ids, "t": rng.random(n) * 100, "mcc": rng.integers(0, 20, n),
                             "amount": rng.lognormal(2, 1, n)}), tmp / "e.parquet")
    pq.write_table(pa.table({"client": np.arange(240), "y": rng.integers(0, 2, 240)}), tmp / "t.parquet")
    spec = IngestSpec(id_col="client", time_col="t", cat_cols=("mcc",), num_cols=("amount",), target_col="y",
                      task="binary", test_fraction=0.2)
    schema = stream_ingest(tmp / "e.parquet", tmp / "d", spec, targets_path=tmp / "t.parquet", n_buckets=3)
    assert [s["name"] for s in schema.shards] == ["sequences-00000", "sequences-00001", "sequences-00002"]
    return tmp / "d"


def pretrain(data, out, epochs, *extra):
    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    return main(["pretrain", "--data", str(data), "--method", "coles", "--out", str(out), "--epochs", str(epochs),
                 *sets, *extra])


def losses(run):
    return [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_three_shard_set_trains_resumes_evaluates_and_embeds(sharded, tmp_path, capsys):
    seqs = EventSequences.open(sharded)
    assert len(seqs.event_starts) == 4 and seqs.num_events == sum(s["events"] for s in seqs.schema.shards)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert pretrain(sharded, straight, 2) == 0
    assert pretrain(sharded, resumed, 1) == 0
    assert len(losses(resumed)) == 1
    assert pretrain(sharded, resumed, 2, "--resume") == 0
    assert losses(resumed) == losses(straight) and np.isfinite(losses(straight)).all()
    capsys.readouterr()

    assert main(["evaluate", "--data", str(sharded), "--checkpoint", str(straight / "best"), "--json",
                 "--folds", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "coles" and 0 <= result["tree_test_roc_auc"] <= 1

    out = tmp_path / "emb.parquet"
    assert main(["embed", "--data", str(sharded), "--checkpoint", str(straight / "best"), "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == len(seqs)
    assert sorted(table.column("id").to_pylist()) == sorted(seqs.ids.to_pylist())
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    assert np.isfinite(vectors).all() and vectors.std(0).min() > 0
