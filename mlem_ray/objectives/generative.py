"""Generative objective: autoregressive reconstruction of the whole sequence from its embedding
(docs/method.md#reconstruction-loss; the generative modality of MLEM, Moskvoretskii et al. 2024)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.embedder import encode_dt
from .gather import global_mean


class ReconstructionLoss(nn.Module):
    """L_rec = w_num * MSE_num + w_cat * CE + w_time * MSE_dt + w_l1 * mean_i |z_i|_1

    Decoder position j predicts event j (it has seen the start token and events < j):
    - CE: per categorical field the cross-entropy over valid positions, summed over fields;
    - MSE_num: over numeric values present at valid positions (padding and NaN masked; true zeros
      are kept: masking them, as the reference code did, is a defect);
    - MSE_dt: on the time gap *of event j* (encoded as the model sees it), over valid positions
      j >= 1 (event 0's gap is 0 by definition). The reference code compared position j with the
      gap to event j+1 and gave the last position a garbage target: both defects.
    Returns a dict with "rec" and its parts."""

    def __init__(self, w_num=1.0, w_cat=1.0, w_time=10.0, w_l1=1e-3, time_encoding="log1p"):
        super().__init__()
        self.w_num, self.w_cat, self.w_time, self.w_l1 = w_num, w_cat, w_time, w_l1
        self.time_encoding = time_encoding

    def forward(self, pred: dict, batch, z: torch.Tensor) -> dict:
        # Means are taken over the global batch (global_mean), so N workers match one worker.
        mask = batch.mask
        zero = z.new_zeros(())
        ce = zero
        for j, logits in enumerate(pred["cat"]):
            target = batch.cat[:, :, j].masked_fill(~mask, -100)
            total = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum")
            ce = ce + global_mean(total, mask.sum())
        mse_num = zero
        if pred["num"] is not None:
            # masked_fill, not boolean indexing: indexing makes a data-dependent shape, which
            # waits for the device (a host sync per step on a GPU)
            err = (pred["num"] - batch.num).pow(2).masked_fill(~batch.num_mask, 0.0)
            mse_num = global_mean(err.sum(), batch.num_mask.sum())
        time_mask = mask.clone()
        time_mask[:, 0] = False
        mse_dt = zero
        if self.time_encoding != "none":
            target_dt = encode_dt(batch.dt, self.time_encoding)
            err_dt = (pred["dt"] - target_dt).pow(2).masked_fill(~time_mask, 0.0)
            mse_dt = global_mean(err_dt.sum(), time_mask.sum())
        l1 = global_mean(z.abs().sum(), z.shape[0])
        rec = self.w_num * mse_num + self.w_cat * ce + self.w_time * mse_dt + self.w_l1 * l1
        return {"rec": rec, "rec_cat": ce.detach(), "rec_num": mse_num.detach(), "rec_time": mse_dt.detach(),
                "l1": l1.detach()}


class GenerativeObjective(nn.Module):
    """L = L_rec on whole sequences. Batches: full sequences."""

    batch_kind = "full"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, reconstruction: ReconstructionLoss):
        super().__init__()
        self.encoder, self.decoder, self.reconstruction = encoder, decoder, reconstruction

    def forward(self, batch) -> dict:
        z = self.encoder(batch)
        events = self.encoder.embedder(batch)
        parts = self.reconstruction(self.decoder(z, events), batch, z)
        return {"loss": parts["rec"], **{k: v.detach() for k, v in parts.items()}}
