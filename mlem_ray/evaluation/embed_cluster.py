"""`mlem-ray embed --address ...`: embeddings of a whole data set across a Ray cluster.

Ray Data splits the data set's rows (sorted, so each block reads a contiguous run of events from
one or a few shards) into blocks and runs `map_batches` over a pool of `workers` actors; each
actor opens the data set once (memory-mapped; a URI is copied once per node, storage.local_copy),
loads the encoder once (on its GPU where it holds one) and turns a batch of row indices into the
rows of `embed`'s table (evaluation/embed.py, `embedding_table`: the same fixed_size_list column).
Ray Data writes the result as Parquet shards into the directory or URI `out`, with its progress
bars. Each value is what the single-process `embed` gives for that sequence.
"""
from __future__ import annotations

import numpy as np

from ..errors import UsageError

# Rows per block (one Parquet shard each): a block's table in the object store is a few tens of
# MB at H = 256, and a large data set still gives every actor many blocks to balance over.
BLOCK_ROWS = 65_536
BATCH_ROWS = 4_096  # rows per map_batches call


class RowEmbedder:
    """The actor's callable: row indices -> an Arrow table of their embeddings."""

    def __init__(self, data: str, checkpoint: str, device: str, wide: bool, batch_size: int = 256):
        from ..data.prepared import EventSequences
        from ..training.checkpoint import load_encoder

        self.seqs = EventSequences.open(data)
        self.encoder, ckpt = load_encoder(checkpoint, self.seqs.schema, device)
        self.max_len = ckpt.state["trainer"].get("max_len", self.seqs.schema.max_len)
        self.device, self.wide, self.batch_size = device, wide, batch_size

    def __call__(self, batch: dict):
        from . import mapped_pages
        from .embed import embed_rows, embedding_table

        rows = np.asarray(batch["row"], dtype=np.int64)
        emb = embed_rows(self.encoder, self.seqs, rows, self.max_len, batch_size=self.batch_size, device=self.device)
        mapped_pages.release(self.seqs.path)  # each event is read once: its pages need not stay resident
        return embedding_table(self.seqs, rows, emb, wide=self.wide)


def embed_dataset(data: str, checkpoint: str, out: str, address: str | None = None, workers: int = 1,
                  gpus_per_worker: float = 0.0, splits: tuple = (), wide: bool = False,
                  block_rows: int = BLOCK_ROWS) -> tuple[int, int]:
    """Embed every sequence of `data` (only `splits` when given) into Parquet shards in `out`
    -> (sequences written, embedding size H)."""
    import ray

    from .. import storage
    from ..data.prepared import EventSequences
    from ..training.checkpoint import load_encoder
    from ..training.resources import check_gpus, connect

    if storage.exists(out) and (not storage.is_dir(out) or storage.listdir(out)):
        raise UsageError(f"--out {out} already exists and is not an empty directory; choose a new one")
    # The driver reads the per-sequence arrays only (ids, splits), never the events.
    seqs = EventSequences.open(data)
    encoder, _ = load_encoder(checkpoint, seqs.schema)  # a checkpoint of another data set is refused here
    dims = int(encoder.out_dim)
    del encoder
    rows = seqs.indices(*splits) if splits else seqs.indices()
    connect(address, env_vars=storage.worker_env() if storage.is_uri(out) or storage.is_uri(data) else None)
    if gpus_per_worker:
        check_gpus(gpus_per_worker, workers)
    # Contiguous runs of sorted rows, at least one block per actor.
    count = max(1, min(len(rows), max(-(-len(rows) // block_rows), workers)))
    ds = ray.data.from_numpy(np.array_split(rows, count)).rename_columns({"data": "row"})
    ds = ds.map_batches(
        RowEmbedder, batch_size=BATCH_ROWS, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker or None, num_cpus=None if gpus_per_worker else 1,
        fn_constructor_kwargs=dict(data=str(data), checkpoint=str(checkpoint),
                                   device="cuda" if gpus_per_worker else "cpu", wide=wide))
    fs, path = storage.resolve(out)
    ds.write_parquet(path, filesystem=fs, max_rows_per_file=block_rows)
    return int(len(rows)), dims
