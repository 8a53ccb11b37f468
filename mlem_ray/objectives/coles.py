"""CoLES: contrastive learning on slices of event sequences (Babaev et al., SIGMOD 2022).

Slices of the same sequence are positives, slices of the other sequences in the (global) batch
negatives. Embeddings enter the loss through an optional projector and are L2-normalised; the
downstream embedding is the encoder's output before the projector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gather import gather, gather_labels


class MarginLoss(nn.Module):
    """Contrastive margin loss with hard negatives (pytorch-lifestream's ContrastiveLoss +
    HardNegativePairSelector):

        L = sum_{(i,j): y_i = y_j, i<j} d_ij^2 + sum_i sum_{j in hard_neg(i)} relu(m - d_ij)^2

    d_ij = ||u_i - u_j||_2 on L2-normalised rows u; hard_neg(i) = the `neg_count` rows of other
    sequences closest to i. embeddings (N, D), labels (N,) -> scalar."""

    def __init__(self, margin: float = 0.5, neg_count: int = 5):
        super().__init__()
        self.margin, self.neg_count = margin, neg_count

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # In float64 on CPU: in float32 at 2 threads the loss of the same weights and batch
        # differed by one float32 ulp between processes (identical within a process and at 1
        # thread), so two runs with the same seed and budget logged different losses. The
        # float64 result rounded back to float32 agreed in every process tried
        # (tests/test_determinism.py); the (N, N) Gram matrix of one batch is small.
        if embeddings.device.type == "cpu" and embeddings.dtype == torch.float32:
            return self._loss(embeddings.double(), labels).float()
        return self._loss(embeddings, labels)

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        u = F.normalize(embeddings, dim=-1)
        n = u.shape[0]
        same = labels[:, None] == labels[None, :]
        # Distances from the Gram matrix; clamp before sqrt (its gradient is infinite at 0).
        sq = (2.0 - 2.0 * u @ u.T).clamp_min(1e-12)
        pos_i, pos_j = torch.triu_indices(n, n, offset=1, device=u.device)
        keep = same[pos_i, pos_j]
        pos_i, pos_j = pos_i[keep], pos_j[keep]
        positive = (u[pos_i] - u[pos_j]).pow(2).sum(-1)
        k = min(self.neg_count, n - 1)
        neg_total = u.new_zeros(())
        if k > 0:  # no negatives at all: every pick is masked (inf), none valid, a zero term; no host read
            masked = sq.detach().masked_fill(same, float("inf"))
            hard = masked.topk(k, dim=1, largest=False).indices  # (N, k)
            valid = torch.isfinite(masked.gather(1, hard))
            anchors = torch.arange(n, device=u.device)[:, None].expand_as(hard)
            d = (u[anchors[valid]] - u[hard[valid]]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
            neg_total = F.relu(self.margin - d).pow(2).sum()
        return positive.sum() + neg_total


class InfoNCELoss(nn.Module):
    """InfoNCE with several positives per anchor (the supervised-contrastive form):

        L = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / tau) / sum_{a != i} exp(s_ia / tau) )

    s = cosine similarity, P(i) = other rows of i's sequence. Anchors without a positive are
    skipped. embeddings (N, D), labels (N,) -> scalar."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        u = F.normalize(embeddings, dim=-1)
        logits = u @ u.T / self.temperature
        eye = torch.eye(len(u), dtype=torch.bool, device=u.device)
        logits = logits.masked_fill(eye, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positive = (labels[:, None] == labels[None, :]) & ~eye
        count = positive.sum(1)
        has = count > 0
        # The mean over anchors that have a positive, without boolean indexing (a data-dependent
        # shape waits for the device); no such anchor at all gives 0 / 0 = NaN, as an empty mean does.
        per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(1) / count.clamp_min(1)
        return per_anchor.masked_fill(~has, 0.0).sum() / has.sum()


class Projector(nn.Module):
    """identity | linear | mlp (2 layers, ReLU), applied inside the contrastive loss only."""

    def __init__(self, kind: str, in_dim: int, width: int = 64):
        super().__init__()
        if kind == "identity":
            self.net = nn.Identity()
        elif kind == "linear":
            self.net = nn.Linear(in_dim, width)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ContrastiveLoss(nn.Module):
    """Projector + margin or InfoNCE loss over the global batch. (z (B, H), labels (B,)) -> scalar."""

    def __init__(self, loss: nn.Module, projector: nn.Module):
        super().__init__()
        self.loss, self.projector = loss, projector

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(gather(self.projector(z)), gather_labels(labels))


class ColesObjective(nn.Module):
    """CoLES: L = contrastive loss over k slices per sequence. Batches: slices."""

    batch_kind = "slices"

    def __init__(self, encoder: nn.Module, contrastive: ContrastiveLoss):
        super().__init__()
        self.encoder, self.contrastive = encoder, contrastive

    def forward(self, batch) -> dict:
        z = self.encoder(batch)
        loss = self.contrastive(z, batch.seq_index)
        return {"loss": loss, "contrastive": loss.detach()}
