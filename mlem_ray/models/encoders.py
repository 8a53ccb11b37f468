"""Sequence encoders: a batch of events -> one embedding per sequence (METHOD.md §2)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..data.batching import PaddedBatch
from .embedder import EventEmbedder


class GRUEncoder(nn.Module):
    """GRU whose embedding is the hidden state after the last valid event, so padding never
    changes it (the GRU is causal: outputs before the padded tail do not see it).

    With gradients, rows are sorted by length into up to `buckets` groups and the GRU runs over
    each group's padded block, taking the output at lengths - 1: on CPU, torch's backward through
    packed sequences is about 8x slower than through a padded tensor (4.4 s vs 0.6 s for
    320 x 99 events, hidden 256), and the groups skip much of the padding that one block would
    carry. Without gradients, packed sequences skip the padding entirely and are the faster route,
    and on a GPU they are the route with gradients too: cuDNN runs packed sequences in one fused
    kernel per layer, forward and backward."""

    # Under bf16/fp16 autocast the recurrence stays fp32 (its input is cast back): cuDNN's bf16 RNN
    # exists only from cuDNN 9.13, and where it exists it was slower. On an H200 (cuDNN 9.19), each
    # in a fresh process, fp32 vs bf16 recurrence: MLEM 1037 vs 808 sequences/s (second run of the
    # process), CoLES batch 256 7815 vs 5467 clients/s (first run); gpu_bf16_ab_h200.jsonl.
    fp32_recurrence = True

    def __init__(self, input_dim: int, hidden: int, layers: int = 1, dropout: float = 0.0, buckets: int = 4):
        super().__init__()
        self.rnn = nn.GRU(input_dim, hidden, num_layers=layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.out_dim, self.buckets = hidden, buckets

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.fp32_recurrence and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x.float(), lengths)
        return self._forward(x, lengths)

    def _forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or x.is_cuda:
            packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
            _, h = self.rnn(packed)  # (layers, B, H), in the batch's original order
            return h[-1]
        last = (lengths - 1).clamp_min(0)
        # groups of at least 128 rows: smaller matrix products lose more to overhead than the padding
        # costs (measured on 320 CoLES slices: 1 group 100, 2 groups 129, 4 groups 115 clients/s)
        groups = max(1, min(self.buckets, x.shape[0] // 128))
        order = torch.argsort(last)
        parts = []
        for rows in torch.tensor_split(order, groups):
            steps = int(last[rows].max()) + 1
            out, _ = self.rnn(x[rows, :steps])  # (rows, steps, H)
            parts.append(out[torch.arange(len(rows), device=x.device), last[rows]])
        return torch.cat(parts).index_select(0, torch.argsort(order))


class TransformerEncoder(nn.Module):
    """Transformer over events with learned positions and a padding mask; the embedding is the
    output at the last valid event ("last") or the mean over valid events ("mean")."""

    def __init__(self, input_dim: int, hidden: int, layers: int, heads: int, dropout: float,
                 pooling: str = "last", max_len: int = 1024):
        super().__init__()
        self.proj = nn.Linear(input_dim, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pooling, self.max_len, self.out_dim = pooling, max_len, hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence of {T} events is longer than the encoder's max_len {self.max_len}")
        h = self.proj(x) + self.pos.weight[:T]
        h = self.body(h, src_key_padding_mask=~mask)  # (B, T, H)
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        last = (lengths - 1).clamp_min(0)
        return h[torch.arange(h.shape[0], device=h.device), last]


class SequenceEncoder(nn.Module):
    """Event embedder -> sequence encoder -> optional LayerNorm + dropout (generative and MLEM
    models use them on the embedding). forward(batch) -> (B, out_dim)."""

    def __init__(self, embedder: EventEmbedder, body: nn.Module, embedding_norm: bool = False,
                 embedding_dropout: float = 0.0):
        super().__init__()
        self.embedder, self.body = embedder, body
        self.norm = nn.LayerNorm(body.out_dim) if embedding_norm else nn.Identity()
        self.drop = nn.Dropout(embedding_dropout) if embedding_norm else nn.Identity()
        self.out_dim = body.out_dim

    def forward(self, batch: PaddedBatch) -> torch.Tensor:
        x = self.embedder(batch)
        return self.drop(self.norm(self.body(x, batch.mask, batch.lengths)))
