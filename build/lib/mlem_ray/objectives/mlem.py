"""MLEM (Moskvoretskii et al., 2024, arXiv 2401.15935): contrastive and generative learning as two
modalities. A frozen CoLES encoder (the teacher) gives z_con; a generative encoder + decoder is
trained on whole sequences with

    L = w_rec * L_rec + w_align * L_SigLIP(z_gen, z_con).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .gather import gather
from .generative import ReconstructionLoss


class SigLIPLoss(nn.Module):
    """Sigmoid contrastive alignment (Zhai et al., 2023):

        logits_ij = exp(t) * <a_i, b_j> + b,   a, b L2-normalised,
        label_ij = +1 if i == j else -1,
        L = mean_i sum_j -log sigmoid(label_ij * logits_ij).

    t and b are learnable (init log 10 and -10) and must not be weight-decayed. Under DDP both
    embedding sets are gathered, so every rank computes the loss of the global batch, exactly as
    one process would on it (the pairwise terms need every row)."""

    def __init__(self, t_init: float = math.log(10.0), b_init: float = -10.0):
        super().__init__()
        self.t = nn.Parameter(torch.tensor(float(t_init)))
        self.b = nn.Parameter(torch.tensor(float(b_init)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = F.normalize(gather(a), dim=-1)
        b = F.normalize(gather(b), dim=-1)
        logits = self.t.exp() * a @ b.T + self.b
        labels = 2.0 * torch.eye(len(a), device=a.device, dtype=a.dtype) - 1.0
        return -F.logsigmoid(labels * logits).sum(1).mean()


class MLEMObjective(nn.Module):
    """Generative encoder + decoder, aligned to a frozen teacher. Batches: full sequences."""

    batch_kind = "full"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, teacher: nn.Module,
                 reconstruction: ReconstructionLoss, siglip: SigLIPLoss, w_rec: float = 1.0, w_align: float = 10.0):
        super().__init__()
        self.encoder, self.decoder, self.reconstruction, self.siglip = encoder, decoder, reconstruction, siglip
        # When the generative encoder is sized differently from the teacher, a linear map brings
        # its embedding to the teacher's width inside the alignment loss only.
        self.align_map = (nn.Linear(encoder.out_dim, teacher.out_dim, bias=False)
                          if encoder.out_dim != teacher.out_dim else nn.Identity())
        self.w_rec, self.w_align = w_rec, w_align
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, ever
        return self

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.siglip.t, self.siglip.b]

    def forward(self, batch) -> dict:
        z = self.encoder(batch)
        with torch.no_grad():
            z_con = self.teacher(batch)
        parts = self.reconstruction(self.decoder(z, self.encoder.embedder(batch)), batch, z)
        align = self.siglip(self.align_map(z), z_con)
        loss = self.w_rec * parts["rec"] + self.w_align * align
        return {"loss": loss, "align": align.detach(), "siglip_t": self.siglip.t.detach(),
                "siglip_b": self.siglip.b.detach(), **{k: v.detach() for k, v in parts.items()}}
