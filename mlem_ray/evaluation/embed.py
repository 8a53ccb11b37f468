"""Embeddings of a prepared data set from a checkpoint, and the robustness protocol
(docs/method.md#robustness: drop a share of events at random and shuffle their order, then re-score)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import gather_events
from ..data.prepared import EventSequences
from ..training.embedding import embed_rows  # noqa: F401  (re-exported)
from ..training.embedding import to_device as _to


def embed_in_chunks(encoder, seqs: EventSequences, rows: np.ndarray, max_len: int, chunk: int = 16_384,
                    **kwargs) -> np.ndarray:
    """embed_rows over at most `chunk` rows at a time in the given (sorted, storage) order, each
    chunk within one stretch of the file, giving back the mapped data set's pages after each
    (evaluation/mapped_pages.py): a sample spread over a large file would otherwise leave most of
    the file resident (the kernel maps pages around each touched one)."""
    from . import mapped_pages

    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), encoder.out_dim), dtype=np.float32)
    for part in mapped_pages.chunks(rows, chunk):
        out[part] = embed_rows(encoder, seqs, rows[part], max_len, **kwargs)
        mapped_pages.release(seqs.path)
    return out


@torch.no_grad()
def embed_perturbed(encoder, seqs: EventSequences, rows: np.ndarray, max_len: int, drop: float, shuffle: bool,
                    seed: int = 0, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Embeddings after dropping a share `drop` of each sequence's events at random (at least one
    kept) and, with `shuffle`, presenting the kept events in random order."""
    encoder.eval()
    rng = np.random.default_rng(seed)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), encoder.out_dim), dtype=np.float32)
    for i in range(0, len(rows), batch_size):
        r = rows[i : i + batch_size]
        n = np.minimum(seqs.lengths[r], max_len)
        first = seqs.offsets[r] + seqs.lengths[r] - n
        T = int(n.max())
        pos = np.arange(T)[None, :]
        valid = pos < n[:, None]
        keep = valid & (rng.random(valid.shape) >= drop)
        keep[np.arange(len(r)), rng.integers(0, n)] = True  # never an empty sequence
        key = rng.random(valid.shape) if shuffle else pos.astype(np.float64).repeat(len(r), 0)
        key = np.where(keep, key, np.inf)  # kept events first, in key order
        order = np.argsort(key, axis=1, kind="stable")
        kept = keep.sum(1)
        mask = pos < kept[:, None]
        event_index = first[:, None] + order
        batch = _to(gather_events(seqs, event_index, mask, r), device)
        if shuffle:
            batch.dt.clamp_(min=0)  # gaps of out-of-order events are negative; the model never saw those
        out[i : i + len(r)] = encoder(batch).float().cpu().numpy()
    return out


def embedding_table(seqs: EventSequences, rows: np.ndarray, emb: np.ndarray, wide: bool = False):
    """The `embed` output: id, split, target (when the data set has targets; null where
    unlabelled) and `embedding` as one fixed_size_list<float32>[H] column, the layout Hugging Face
    datasets, Lance and Ray Data read as a vector. `wide`: one float32 column per dimension
    (e0..eH-1) instead."""
    import pyarrow as pa

    columns = {"id": seqs.ids.take(pa.array(rows)), "split": pa.array(seqs.split[rows].astype(str))}
    if seqs.targets is not None:
        target = seqs.targets[rows]
        columns["target"] = pa.array(target, mask=np.isnan(target))
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if wide:
        columns.update({f"e{j}": emb[:, j] for j in range(emb.shape[1])})
    else:
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    return pa.table(columns)


# Sequences embedded and written per Parquet row group by `write_embeddings`: the embeddings in
# memory at once are CHUNK x H float32 (64 MiB at H = 256), whatever the number of sequences.
WRITE_CHUNK = 65_536


def write_embeddings(encoder, seqs: EventSequences, rows: np.ndarray, max_len: int, out, wide: bool = False,
                     chunk: int = WRITE_CHUNK, device="cpu", progress: bool = False, batch_size: int = 256) -> tuple[int, bool]:
    """Embed `rows` `chunk` sequences at a time into one Parquet file `out` (a path or a URI),
    one row group a chunk, in the layout of `embedding_table`; -> (the embedding size H, whether
    every value is finite).

    Readers never see half a file: it is written to a temp sibling (or, for a URI, a local temp
    file uploaded once complete) and renamed into place."""
    import os
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from .. import storage
    from . import mapped_pages

    rows = np.asarray(rows, dtype=np.int64)
    remote = storage.is_uri(out)
    if remote:
        handle, tmp = tempfile.mkstemp(prefix="mlem_ray_embed_", suffix=".parquet")
        os.close(handle)
        tmp = Path(tmp)
    else:
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    writer, finite = None, True
    try:
        with tqdm(total=len(rows), desc="embedding", unit="seq", disable=None if progress else True) as bar:
            for i in range(0, max(len(rows), 1), max(1, chunk)):
                part = rows[i : i + chunk]
                emb = embed_rows(encoder, seqs, part, max_len, batch_size=batch_size, device=device)
                finite = finite and bool(np.isfinite(emb).all())
                table = embedding_table(seqs, part, emb, wide=wide)
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table, row_group_size=max(len(part), 1))
                # The chunk's events were read once: their mapped pages need not stay resident.
                mapped_pages.release(seqs.path)
                bar.update(len(part))
        writer.close()
        writer = None
        if remote:
            fs, path = storage.resolve(out)
            import pyarrow.fs as pafs

            pafs.copy_files(str(tmp), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        else:
            os.replace(tmp, target)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return int(encoder.out_dim), finite
