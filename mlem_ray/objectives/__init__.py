"""Objectives: each maps a batch to {"loss": ..., parts...}; the training loop is shared.

`build_objective` is the one place a Config becomes loss modules (flat arguments below it)."""
from __future__ import annotations

import numpy as np
from torch import nn

from ..errors import ConfigError, DataError
from ..models.build import build_decoder, build_encoder
from .coles import ColesObjective, ContrastiveLoss, InfoNCELoss, MarginLoss, Projector
from .generative import GenerativeObjective, ReconstructionLoss
from .hybrid import HybridObjective
from .mlem import MLEMObjective, SigLIPLoss
from .supervised import SupervisedObjective

__all__ = ["ColesObjective", "ContrastiveLoss", "GenerativeObjective", "HybridObjective", "InfoNCELoss",
           "MLEMObjective", "MarginLoss", "Projector", "ReconstructionLoss", "SigLIPLoss", "SupervisedObjective",
           "build_objective"]


def _contrastive(cfg, dim: int) -> ContrastiveLoss:
    o = cfg.objective
    loss = MarginLoss(o.margin, o.neg_count) if o.contrastive_loss == "margin" else InfoNCELoss(o.tau)
    return ContrastiveLoss(loss, Projector(o.projector, dim, o.projector_width))


def _reconstruction(cfg) -> ReconstructionLoss:
    o = cfg.objective
    return ReconstructionLoss(o.w_num, o.w_cat, o.w_time, o.w_l1, cfg.model.time_encoding)


def build_objective(cfg, schema, max_len: int, teacher: nn.Module | None = None, targets: np.ndarray | None = None):
    """-> an objective module holding the encoder (as `.encoder`) and everything it trains.
    `teacher`: the frozen CoLES encoder (MLEM). `targets`: training targets (supervised, for scaling)."""
    method = cfg.objective.method
    o = cfg.objective
    encoder = build_encoder(cfg, schema, max_len)
    if method == "coles":
        return ColesObjective(encoder, _contrastive(cfg, encoder.out_dim))
    if method == "supervised":
        if not schema.task:
            raise DataError("the supervised baseline needs a data set with targets")
        mean = float(np.nanmean(targets)) if targets is not None and schema.task == "regression" else 0.0
        std = float(np.nanstd(targets)) if targets is not None and schema.task == "regression" else 1.0
        return SupervisedObjective(encoder, schema.task, schema.num_classes, mean, std if std > 0 else 1.0)
    decoder = build_decoder(cfg, schema, encoder.embedder.out_dim, encoder.out_dim, max_len)
    if method == "generative":
        return GenerativeObjective(encoder, decoder, _reconstruction(cfg))
    if method == "hybrid":
        return HybridObjective(encoder, decoder, _reconstruction(cfg), _contrastive(cfg, encoder.out_dim), o.w_rec, o.w_con)
    if teacher is None:
        raise ConfigError("MLEM needs a frozen CoLES teacher (objective.teacher)")
    return MLEMObjective(encoder, decoder, teacher, _reconstruction(cfg), SigLIPLoss(o.siglip_t_init, o.siglip_b_init),
                         o.w_rec, o.w_align)
