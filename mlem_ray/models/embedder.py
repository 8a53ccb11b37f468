"""Event embedder (docs/method.md#event-embedder): one vector per event from its fields and its time gap."""
from __future__ import annotations

import torch
from torch import nn

from ..data.batching import PaddedBatch


def encode_dt(dt: torch.Tensor, time_encoding: str) -> torch.Tensor:
    """The time-gap feature the model sees, and reconstructs: log1p(dt), dt, or nothing."""
    if time_encoding == "log1p":
        return torch.log1p(dt.clamp_min(0))
    return dt


class EventEmbedder(nn.Module):
    """Concatenates, per event:
    - per categorical field an embedding (code 0 = padding -> zero vector, 1 = unseen);
    - per numeric field a linear map of (value, present) so a missing value (NaN in the data, 0 here)
      is distinguishable from a value at the median;
    - the time gap since the previous event (log1p-scaled by default).
    Output: (B, T, out_dim)."""

    def __init__(self, cat_sizes: list[int], cat_dim: int, n_num: int, num_dim: int, time_encoding: str = "log1p"):
        super().__init__()
        self.cat = nn.ModuleList(nn.Embedding(n, cat_dim, padding_idx=0) for n in cat_sizes)
        self.n_num, self.num_dim = n_num, num_dim
        if n_num:
            self.num_weight = nn.Parameter(torch.randn(n_num, 2, num_dim) * 0.5)
            self.num_bias = nn.Parameter(torch.zeros(n_num, num_dim))
        self.time_encoding = time_encoding
        self.out_dim = len(cat_sizes) * cat_dim + n_num * num_dim + (time_encoding != "none")
        if self.out_dim == 0:
            from ..errors import ConfigError

            raise ConfigError("the data set has no fields and model.time_encoding is none: nothing to embed")

    def forward(self, batch: PaddedBatch) -> torch.Tensor:
        parts = [emb(batch.cat[:, :, j]) for j, emb in enumerate(self.cat)]
        if self.n_num:
            present = batch.num_mask.to(batch.num.dtype)
            x = torch.stack([batch.num, present], dim=-1)  # (B, T, N, 2)
            v = torch.einsum("btnk,nkd->btnd", x, self.num_weight) + self.num_bias
            v = v * batch.mask[:, :, None, None]
            parts.append(v.flatten(2))
        if self.time_encoding != "none":
            parts.append(encode_dt(batch.dt, self.time_encoding).unsqueeze(-1))
        return torch.cat(parts, dim=-1)
