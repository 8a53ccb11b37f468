"""Streaming ingest across a Ray cluster: the passes of data/streaming.py as Ray tasks.

- pass 2: one task per input file partitions it into bucket files ``b<bucket>-f<file>.arrow``;
- pass 3a: one task per bucket reads its parts in file order (so events at equal times keep the
  order of a single-node read), sorts, truncates, splits and summarises it;
- the driver merges the summaries into the vocabularies and statistics (streaming.fit);
- pass 3b: one task per bucket encodes it into a shard.

Every task reads and writes through `mlem_ray.storage` (pyarrow.fs), so on a multi-node cluster
the spill location (``--tmp-dir``) and ``--out`` are an object-store URI (or a shared disk) that
every node reaches. With the same table and seed the content equals a single-node ingest: the
same functions run on the same bucket contents, only in other processes.

On object storage there is no rename: the shards are written under a staging prefix and copied
to ``--out`` when all are done, ``schema.json`` last (a location without it is no data set).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import replace

from .. import storage
from . import sources, streaming
from .ingest import IngestSpec, labelled_ids
from .prepared import PreparedWriter
from .schema import Schema


def _connect(address: str | None):
    import ray

    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": storage.worker_env()}, log_to_driver=False)
    return ray


def cluster_ingest(events_path, out, spec: IngestSpec, targets_path=None, overwrite: bool = False,
                   memory_gb: float | None = None, tmp_dir=None, address: str | None = None,
                   n_buckets: int | None = None, values_cap: int = streaming.VALUES_CAP, progress=None) -> Schema:
    say = progress or (lambda msg: None)
    ray = _connect(address)
    targets, spec = streaming.read_targets(targets_path, spec)
    spec = replace(spec, source=str(events_path))
    files = sources.list_files(events_path, "events")
    id_type = streaming.id_type_of(files, spec)
    labelled = labelled_ids(targets, spec, id_type) if targets is not None else None
    events = streaming.estimate_events(files)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if n_buckets is None:
        n_buckets = streaming.bucket_count(events, memory_gb or streaming.default_memory_gb(), concurrent=min(cpus, 2))
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if tmp_dir:
        spill = storage.join(tmp_dir, f"{streaming.SPILL_PREFIX}{token}")
    elif storage.is_uri(out):
        spill = f"{str(out).rstrip('/')}.spill-{token}"
    else:
        spill = str(streaming.make_spill_dir(streaming.spill_root(out)))
    if not storage.is_uri(spill):
        storage.makedirs(spill)  # object stores need no directories
    if storage.is_uri(out):
        streaming.check_out_uri(out, overwrite)

    def run(fn, calls):
        task = ray.remote(num_cpus=1)(fn)
        shared = {}  # large arguments (the spec, the labelled ids, the statistics) go to the object store once

        def ref(x):
            if isinstance(x, (str, int, list, sources.InputFile)) or x is None:
                return x
            if id(x) not in shared:
                shared[id(x)] = ray.put(x)
            return shared[id(x)]

        refs = [task.remote(*[ref(a) for a in args]) for args in calls]
        for i in range(len(refs)):  # in call order, each let go of once handed out
            result = ray.get(refs[i])
            refs[i] = None
            yield result

    units = streaming.work_units(files, 2 * cpus)
    say(f"pass 2: {len(units)} unit(s) of {len(files)} file(s) as Ray tasks, about {events:,} events -> "
        f"{n_buckets} bucket(s)")
    try:
        if not storage.is_uri(out):
            with PreparedWriter(out, overwrite=overwrite) as writer:
                schema, target_table = streaming.run_passes(units, spec, labelled, targets, spill,
                                                            lambda schema: str(writer.directory), n_buckets,
                                                            values_cap, run, say)
                for e in schema.shards:
                    writer.add_written_shard(e)
                writer.finish(schema, target_table)
            return schema
        staging = storage.join(spill, "out")
        schema, target_table = streaming.run_passes(units, spec, labelled, targets, spill, lambda schema: staging,
                                                    n_buckets, values_cap, run, say)
        _publish_from_staging(staging, out, schema, target_table)
        say(f"published to {out}")
        return schema
    finally:
        storage.delete(spill)


def _publish_from_staging(staging: str, out: str, schema: Schema, target_table) -> None:
    """Copy the staged shards to `out`, then the targets, then ``schema.json`` last."""
    import io

    import pyarrow.parquet as pq

    storage.delete(out)
    storage.copy_dir(staging, out)
    if target_table is not None:
        buf = io.BytesIO()
        pq.write_table(target_table, buf, compression="zstd", write_statistics=False)
        storage.write_bytes(storage.join(out, "targets.parquet"), buf.getvalue())
    storage.write_text(storage.join(out, "schema.json"), schema.to_json())
