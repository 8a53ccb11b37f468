"""Sequence encoders: a batch of events -> one embedding per sequence (docs/method.md#sequence-encoders)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..data.batching import PaddedBatch
from .embedder import EventEmbedder
from .recurrence import gru_last_hidden


class GRUEncoder(nn.Module):
    """GRU whose embedding is the hidden state after the last valid event, so padding never
    changes it. On CPU the recurrence runs over length-sorted packed rows with a hand-written
    backward (models/recurrence.py: 1.28x faster than torch's padded GRU on 320 CoLES slices of
    25..100 events, hidden 256, forward + backward, median of 8); on a GPU it is cuDNN's packed GRU, one fused
    kernel per layer, forward and backward. Both use the same `nn.GRU` parameters."""

    # Under bf16/fp16 autocast the recurrence stays fp32 (its input is cast back): cuDNN's bf16 RNN
    # exists only from cuDNN 9.13, and where it exists it was slower. On an H200 (cuDNN 9.19), each
    # in a fresh process, fp32 vs bf16 recurrence: MLEM 1037 vs 808 sequences/s (second run of the
    # process), CoLES batch 256 7815 vs 5467 clients/s (first run); gpu_bf16_ab_h200.jsonl.
    fp32_recurrence = True

    def __init__(self, input_dim: int, hidden: int, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.rnn = nn.GRU(input_dim, hidden, num_layers=layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.out_dim = hidden
        # The lengths it packs by are read on the host: SequenceEncoder hands over the batch's
        # host copy, so packing a GPU batch needs no device-to-host read.
        self.wants_host_lengths = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.fp32_recurrence and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x.float(), lengths)
        return self._forward(x, lengths)

    def _forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return packed_last_hidden(self.rnn, x, lengths)
        return gru_last_hidden(self.rnn, x, lengths)


def packed_last_hidden(rnn: nn.GRU, x: torch.Tensor, host_lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, F) padded -> (B, H): torch's packed GRU (cuDNN's on a GPU), the top layer's hidden
    state after each row's last valid event (a length of 0 counts as 1). The rows are sorted by
    length on the host and the order copied from pinned memory without blocking; torch's own
    unsorted packing copies its order from pageable memory, which waits for the device."""
    lengths, order = torch.sort(host_lengths.cpu().clamp_min(1), descending=True)
    if x.is_cuda:
        order = order.pin_memory()
    order = order.to(x.device, non_blocking=True)
    packed = pack_padded_sequence(x.index_select(0, order), lengths, batch_first=True, enforce_sorted=True)
    _, h = rnn(packed)  # (layers, B, H), in sorted order
    return torch.empty_like(h[-1]).index_copy_(0, order, h[-1])  # back in the batch's order


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
        lengths = batch.lengths
        if getattr(self.body, "wants_host_lengths", False) and batch.host_lengths is not None:
            lengths = batch.host_lengths
        return self.drop(self.norm(self.body(x, batch.mask, lengths)))
