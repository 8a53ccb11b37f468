"""Supervised baseline: the same encoder with a linear head trained on the target.

    binary: BCE-with-logits; multiclass: cross-entropy; regression: MSE on the target
    standardised with the training mean and std (so the loss scale does not depend on units).
Only labelled rows count; batches are whole labelled sequences."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gather import global_mean


class SupervisedObjective(nn.Module):
    batch_kind = "full"

    def __init__(self, encoder: nn.Module, task: str, num_classes: int = 0, target_mean: float = 0.0,
                 target_std: float = 1.0):
        super().__init__()
        self.encoder, self.task = encoder, task
        out = num_classes if task == "multiclass" else 1
        self.head = nn.Linear(encoder.out_dim, out)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def forward(self, batch) -> dict:
        z = self.encoder(batch)
        y = batch.target
        labelled = ~torch.isnan(y)
        # Every row is scored and the unlabelled ones masked out of the sum (their target made a
        # harmless 0), rather than selected: a selection's size depends on the data and waits
        # for the device. The loop feeds labelled rows only, so the sums are the selected ones.
        y = y.masked_fill(~labelled, 0.0)
        out = self.head(z)
        if self.task == "binary":
            per_row = F.binary_cross_entropy_with_logits(out.squeeze(-1), y, reduction="none")
        elif self.task == "multiclass":
            per_row = F.cross_entropy(out, y.long(), reduction="none")
        else:
            per_row = F.mse_loss(out.squeeze(-1), (y - self.target_mean) / self.target_std, reduction="none")
        total = per_row.masked_fill(~labelled, 0.0).sum()
        loss = global_mean(total, labelled.sum())  # over the global batch's labelled rows
        return {"loss": loss, "supervised": loss.detach()}
