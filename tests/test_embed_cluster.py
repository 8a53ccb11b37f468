"""`mlem-ray embed --address`: Ray Data over an actor pool writes Parquet shards whose values equal
the single-process embed's (one local Ray instance for the module, tiny data)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, namespace="mlem_ray", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from test_scoring_cost import make_binary

    from mlem_ray.config import make_config
    from mlem_ray.training import LocalReporter, train

    root = tmp_path_factory.mktemp("embed_cluster")
    data = make_binary(root / "d", n=600, shards=3)
    cfg = make_config("coles", {"data.path": str(data), "model.hidden": 8, "data.batch_size": 16,
                                "data.slice_min": 2, "data.slice_max": 10, "train.epochs": 1, "train.budget_steps": 2})
    train(cfg, LocalReporter(root / "run", stream=None))
    return data, root / "run" / "best"


def _single_process(data, checkpoint, splits=()):
    from mlem_ray.data.prepared import EventSequences
    from mlem_ray.evaluation.embed import embed_rows
    from mlem_ray.training.checkpoint import load_encoder

    seqs = EventSequences.open(data)
    encoder, _ = load_encoder(checkpoint, seqs.schema)
    rows = seqs.indices(*splits) if splits else seqs.indices()
    return seqs.ids.take(pa.array(rows)).to_pylist(), embed_rows(encoder, seqs, rows, seqs.schema.max_len)


def test_ray_data_embed_equals_single_process_embed(local_ray, trained, tmp_path):
    from mlem_ray.cli import main

    data, checkpoint = trained
    out = tmp_path / "shards"
    assert main(["embed", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--address", "auto", "--workers", "2"]) == 0
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert set(table.column_names) == {"id", "split", "target", "embedding"}
    ids, expected = _single_process(data, checkpoint)
    got = dict(zip(table.column("id").to_pylist(), np.stack(table.column("embedding").to_numpy(zero_copy_only=False))))
    assert sorted(got) == sorted(ids)  # every sequence once
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), expected, rtol=0, atol=1e-6)


def test_ray_data_embed_writes_bounded_shards(local_ray, trained, tmp_path):
    from mlem_ray.evaluation.embed_cluster import embed_dataset

    data, checkpoint = trained
    out = tmp_path / "small_shards"
    assert embed_dataset(str(data), str(checkpoint), str(out), address="auto", workers=2, block_rows=100) == (600, 8)
    files = sorted(out.glob("*.parquet"))
    assert len(files) >= 6 and all(pq.ParquetFile(f).metadata.num_rows <= 100 for f in files)
    ids, expected = _single_process(data, checkpoint)
    table = pq.read_table(out)
    got = dict(zip(table.column("id").to_pylist(), np.stack(table.column("embedding").to_numpy(zero_copy_only=False))))
    assert len(got) == table.num_rows == 600
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), expected, rtol=0, atol=1e-6)


def test_ray_data_embed_of_one_split_and_refusals(local_ray, trained, tmp_path, capsys):
    from mlem_ray.cli import main

    data, checkpoint = trained
    out = tmp_path / "test_only"
    assert main(["embed", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--address", "auto", "--split", "test"]) == 0
    table = pq.read_table(out)
    ids, expected = _single_process(data, checkpoint, ("test",))
    assert set(table.column("split").to_pylist()) == {"test"} and sorted(table.column("id").to_pylist()) == sorted(ids)
    # a directory that already holds shards is never written into
    before = sorted(p.name for p in out.iterdir())
    assert main(["embed", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--address", "auto"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    # --workers without --address is refused: one process has no actor pool
    assert main(["embed", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.parquet"),
                 "--workers", "2"]) == 2
