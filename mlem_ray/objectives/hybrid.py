"""Naive hybrid: one encoder trained on CoLES slices with

    L = w_rec * L_rec + w_con * L_contrastive

where L_rec reconstructs each slice from its own embedding. This is the baseline that the MLEM
paper shows underperforming the two-modality alignment.

Its default contrastive loss is InfoNCE (config.METHOD_DEFAULTS), a mean over anchors like L_rec:
the margin loss is a sum over pairs whose size grows with the global batch, so with it any fixed
w_con drifts with batch size and worker count (at batch 64 x 5 slices it outweighed L_rec 390:1)."""
from __future__ import annotations

from torch import nn

from .coles import ContrastiveLoss
from .generative import ReconstructionLoss


class HybridObjective(nn.Module):
    batch_kind = "slices"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, reconstruction: ReconstructionLoss,
                 contrastive: ContrastiveLoss, w_rec: float = 1.0, w_con: float = 1.0):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.reconstruction, self.contrastive = reconstruction, contrastive
        self.w_rec, self.w_con = w_rec, w_con

    def forward(self, batch) -> dict:
        z = self.encoder(batch)
        parts = self.reconstruction(self.decoder(z, self.encoder.embedder(batch)), batch, z)
        con = self.contrastive(z, batch.seq_index, batch.positive_pairs)
        loss = self.w_rec * parts["rec"] + self.w_con * con
        return {"loss": loss, "contrastive": con.detach(), **{k: v.detach() for k, v in parts.items()}}
