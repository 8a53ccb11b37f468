"""Generative decoder: autoregressive reconstruction of a whole sequence from its embedding
(docs/method.md#generative-decoder)."""
from __future__ import annotations

import torch
from torch import nn



class GenerativeDecoder(nn.Module):
    """Input positions: [start, e_0, ..., e_{T-2}], where start = Linear(z) and e_j are the
    teacher-forced embedded events; learned positions; causal self-attention; the memory is the
    start token. Output position j has seen the start token and events < j, and predicts event j.

    forward(z (B, H), events (B, T, E)) -> dict: "cat": list of (B, T, vocab_f) logits,
    "num": (B, T, n_num), "dt": (B, T)."""

    def __init__(self, emb_dim: int, event_dim: int, cat_sizes: list[int], n_num: int, width: int = 128,
                 layers: int = 3, heads: int = 2, ff: int = 256, max_len: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.start = nn.Linear(emb_dim, width)
        self.event_in = nn.Linear(event_dim, width)
        self.pos = nn.Embedding(max_len, width)
        layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=ff, dropout=dropout, batch_first=True)
        self.body = nn.TransformerDecoder(layer, layers)
        self.cat_heads = nn.ModuleList(nn.Linear(width, n) for n in cat_sizes)
        self.num_head = nn.Linear(width, n_num) if n_num else None
        self.dt_head = nn.Linear(width, 1)
        self.max_len = max_len

    def forward(self, z: torch.Tensor, events: torch.Tensor) -> dict:
        B, T, _ = events.shape
        if T > self.max_len:
            raise ValueError(f"sequence of {T} events is longer than the decoder's max_len {self.max_len}")
        start = self.start(z).unsqueeze(1)  # (B, 1, W)
        shifted = torch.cat([start, self.event_in(events[:, :-1])], dim=1)  # (B, T, W)
        h = shifted + self.pos.weight[:T]
        # Under autocast attention runs in the autocast type: an fp32 additive mask beside bf16
        # queries would keep attention off the fused kernels.
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=h.device, dtype=dtype)
        h = self.body(h, memory=start, tgt_mask=causal, tgt_is_causal=True)
        return {
            "cat": [head(h) for head in self.cat_heads],
            "num": self.num_head(h) if self.num_head is not None else None,
            "dt": self.dt_head(h).squeeze(-1),
        }
