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
import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

from .. import storage
from . import sources, streaming
from .ingest import IngestSpec, labelled_ids
from .prepared import PreparedWriter, shard_entry, shard_name, write_shard
from .schema import DataError, Schema


def _partition_task(file: sources.InputFile, index: int, spec: IngestSpec, spill: str, n_buckets: int):
    return streaming.partition_files([file], spec, spill, n_buckets, tag=f"f{index:05d}")


def _arrange_task(parts: list[str], spec: IngestSpec, labelled, arranged: str, sample_cap: int):
    summary = streaming.arrange_bucket(parts, spec, labelled, arranged, sample_cap)
    for p in parts:
        storage.delete(p)
    return summary


def _encode_task(arranged: str, spec: IngestSpec, fitted, schema: Schema, shard_dir: str, name: str) -> dict:
    """Encode one bucket and write its shard into `shard_dir` (a local directory, or a URI: the
    files are written locally with the data set's fixed settings, then uploaded)."""
    table = streaming.encode_bucket(arranged, spec, fitted)
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


def _connect(address: str | None):
    import ray

    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": storage.worker_env()}, log_to_driver=False)
    return ray


def cluster_ingest(events_path, out, spec: IngestSpec, targets_path=None, overwrite: bool = False,
                   memory_gb: float | None = None, tmp_dir=None, address: str | None = None,
                   n_buckets: int | None = None, sample_cap: int = streaming.SAMPLE_CAP, progress=None) -> Schema:
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
    storage.makedirs(spill)
    if storage.is_uri(out):
        streaming.check_out_uri(out, overwrite)
    try:
        say(f"pass 2: {len(files)} file(s) as Ray tasks, about {events:,} events -> {n_buckets} bucket(s)")
        part = ray.remote(num_cpus=1)(_partition_task)
        spec_ref = ray.put(spec)
        results = ray.get([part.remote(f, i, spec_ref, spill, n_buckets) for i, f in enumerate(files)])
        if sum(rows for _, rows in results) == 0:
            raise DataError(f"events file {events_path} has a header but no rows")
        arrange = ray.remote(num_cpus=1)(_arrange_task)
        labelled_ref = ray.put(labelled)
        buckets = [b for b in range(n_buckets) if any(b in spilled for spilled, _ in results)]
        summaries = ray.get([
            arrange.remote([spilled[b] for spilled, _ in results if b in spilled], spec_ref, labelled_ref,
                           storage.join(spill, f"sorted-{b:05d}.arrow"), sample_cap)
            for b in buckets])
        say(f"pass 3a: {len(buckets)} bucket(s) sorted")
        counts = streaming.total_counts(summaries)
        if counts["events_kept"] == 0:
            raise DataError(f"no sequence has at least --min-len {spec.min_len} events (longest has "
                            f"{max(s.longest for s in summaries)}); lower --min-len")
        fitted = streaming.fit(summaries, spec, streaming.cat_value_types(summaries, spec), sample_cap)
        target_table, task, class_names = streaming.finish_targets(targets, spec, summaries, counts)
        schema = streaming.make_schema(spec, fitted, counts, task, class_names, targets is not None)
        kept = [s for s in summaries if s.arranged]
        encode = ray.remote(num_cpus=1)(_encode_task)
        fitted_ref, schema_ref = ray.put(fitted), ray.put(schema)
        if not storage.is_uri(out):
            with PreparedWriter(out, overwrite=overwrite) as writer:
                entries = ray.get([encode.remote(s.arranged, spec_ref, fitted_ref, schema_ref, str(writer.directory),
                                                 shard_name(i)) for i, s in enumerate(kept)])
                for e in entries:
                    writer.add_written_shard(e)
                writer.finish(schema, target_table)
            say(f"pass 3b: {len(kept)} shard(s)")
            return schema.with_shards(entries)
        staging = storage.join(spill, "out")
        entries = ray.get([encode.remote(s.arranged, spec_ref, fitted_ref, schema_ref, staging, shard_name(i))
                           for i, s in enumerate(kept)])
        schema = schema.with_shards(entries)
        _publish_from_staging(staging, out, schema, target_table)
        say(f"pass 3b: {len(kept)} shard(s) in {out}")
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
