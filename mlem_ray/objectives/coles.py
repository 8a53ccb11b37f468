"""CoLES: contrastive learning on slices of event sequences (Babaev et al., SIGMOD 2022).

Slices of the same sequence are positives, slices of the other sequences in the (global) batch
negatives. Embeddings enter the loss through an optional projector and are L2-normalised; the
downstream embedding is the encoder's output before the projector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gather import gather, gather_labels, gather_pairs


class MarginLoss(nn.Module):
    """Contrastive margin loss with hard negatives (pytorch-lifestream's ContrastiveLoss +
    HardNegativePairSelector):

        L = sum_{(i,j): y_i = y_j, i<j} d_ij^2 + sum_i sum_{j in hard_neg(i)} relu(m - d_ij)^2

    d_ij = ||u_i - u_j||_2 on L2-normalised rows u; hard_neg(i) = the `neg_count` rows of other
    sequences closest to i. embeddings (N, D), labels (N,) -> scalar."""

    def __init__(self, margin: float = 0.5, neg_count: int = 5):
        super().__init__()
        self.margin, self.neg_count = margin, neg_count

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """`pairs`: the (P, 2) positive pairs, i < j in row-major order, when the caller knows them
        (the slice collator does: PaddedBatch.positive_pairs); without them they are found from
        `labels`, whose data-dependent count waits for the device on a GPU."""
        if pairs is None:
            pairs = same_label_pairs(labels)
        # In float64 on CPU: in float32 at 2 threads the loss of the same weights and batch
        # differed by one float32 ulp between processes (identical within a process and at 1
        # thread), so two runs with the same seed and budget logged different losses. The
        # float64 result rounded back to float32 agreed in every process tried
        # (tests/test_determinism.py); the (N, N) Gram matrix of one batch is small.
        if embeddings.device.type == "cpu" and embeddings.dtype == torch.float32:
            return self._loss(embeddings.double(), labels, pairs).float()
        return self._loss(embeddings, labels, pairs)

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        # Every shape here follows from the batch's layout, none from its values, so nothing
        # waits for the device: the pairs come in as indices, and the hard negatives are picked
        # and masked at a fixed (N, k) rather than selected.
        u = F.normalize(embeddings, dim=-1)
        n = u.shape[0]
        same = labels[:, None] == labels[None, :]
        positive = (u[pairs[:, 0]] - u[pairs[:, 1]]).pow(2).sum(-1)
        k = min(self.neg_count, n - 1)
        neg_total = u.new_zeros(())
        if k > 0:
            # Distances from the Gram matrix, only to rank the candidates (no gradient flows
            # through them); clamped, so that near-zero distances tie as they always have.
            u_ = u.detach()
            sq = (2.0 - 2.0 * u_ @ u_.T).clamp_min(1e-12)
            masked = sq.masked_fill(same, float("inf"))
            hard = masked.topk(k, dim=1, largest=False).indices  # (N, k)
            # A pick is a real negative unless its row has fewer than k rows of other sequences
            # (topk then fills up with masked ones): those terms are zeroed, not selected out.
            valid = torch.isfinite(masked.gather(1, hard))
            anchors = torch.arange(n, device=u.device)[:, None].expand_as(hard)
            d = (u[anchors] - u[hard]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
            neg_total = F.relu(self.margin - d).pow(2).masked_fill(~valid, 0.0).sum()
        return positive.sum() + neg_total


def same_label_pairs(labels: torch.Tensor) -> torch.Tensor:
    """(P, 2): the pairs (i, j), i < j, of rows with equal labels, in row-major order. Found from
    the values, on the host: for callers that do not pass the batch's own pairs."""
    host = labels.detach().cpu()
    n = host.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    keep = host[i] == host[j]
    return torch.stack([i[keep], j[keep]], dim=1).to(labels.device)


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

    def forward(self, z: torch.Tensor, labels: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """`pairs`: this rank's positive pairs (PaddedBatch.positive_pairs), for the margin loss."""
        embeddings, labels = gather(self.projector(z)), gather_labels(labels)
        if isinstance(self.loss, MarginLoss):
            return self.loss(embeddings, labels, gather_pairs(pairs, z.shape[0]) if pairs is not None else None)
        return self.loss(embeddings, labels)


class ColesObjective(nn.Module):
    """CoLES: L = contrastive loss over k slices per sequence. Batches: slices."""

    batch_kind = "slices"

    def __init__(self, encoder: nn.Module, contrastive: ContrastiveLoss):
        super().__init__()
        self.encoder, self.contrastive = encoder, contrastive

    def forward(self, batch) -> dict:
        z = self.encoder(batch)
        loss = self.contrastive(z, batch.seq_index, batch.positive_pairs)
        return {"loss": loss, "contrastive": loss.detach()}
