"""Checkpoints (docs/design.md#checkpoint): a directory with
- ``model.pt``: {"format", "encoder": state dict, "objective": state dict, "trainer": resume state}
  of tensors and plain numbers only, loaded with ``torch.load(weights_only=True)``;
- ``config.yaml``: the full resolved config; ``schema.json``: the data schema; ``metrics.json``.
Any checkpoint can be evaluated, embedded or used as an MLEM teacher on its own.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..config import Config, ConfigError
from ..data.schema import DataError, Schema
from ..errors import CheckpointError  # noqa: F401  (re-exported)

FORMAT = 1


@dataclass
class Checkpoint:
    path: Path
    config: Config
    schema: Schema
    state: dict
    metrics: dict


def save_checkpoint(path, config: Config, schema: Schema, encoder_state: dict, objective_state: dict,
                    trainer_state: dict, metrics: dict) -> Path:
    """Write atomically (temp sibling + rename): a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        torch.save({"format": FORMAT, "encoder": encoder_state, "objective": objective_state,
                    "trainer": trainer_state}, tmp / "model.pt")
        (tmp / "config.yaml").write_text(config.to_yaml())
        (tmp / "schema.json").write_text(schema.to_json())
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_checkpoint(path, map_location="cpu") -> Checkpoint:
    """`path`: a checkpoint directory, or its storage URI (copied once per node into a local cache)."""
    from .. import storage

    try:
        path = storage.local_copy(path)  # a plain path as it is
    except (OSError, storage.StorageError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({str(e).splitlines()[0][:200]})") from None
    path = Path(path)
    if not (path / "model.pt").exists():
        raise CheckpointError(f"{path} is not a checkpoint (no model.pt); pass a checkpoint directory")
    try:
        state = torch.load(path / "model.pt", map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot load {path / 'model.pt'}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has an unknown checkpoint format; re-create it with this version")
    try:
        config = Config.from_dict(yaml.safe_load((path / "config.yaml").read_text()))
        schema = Schema.load(path / "schema.json")
    except (OSError, ConfigError, DataError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return Checkpoint(path, config, schema, state, metrics)


def check_schema(ckpt: Checkpoint, schema: Schema, what: str = "data set") -> None:
    """Refuse a checkpoint trained on data with other fields or vocabularies."""
    if ckpt.schema.fingerprint() != schema.fingerprint():
        mine = [f.name for f in ckpt.schema.categorical] + [f.name for f in ckpt.schema.numeric]
        theirs = [f.name for f in schema.categorical] + [f.name for f in schema.numeric]
        detail = f"fields {mine} vs {theirs}" if mine != theirs else "same fields but other vocabularies or time unit"
        raise CheckpointError(
            f"checkpoint {ckpt.path} was trained on another data schema than this {what} ({detail}); "
            f"use a checkpoint made from the same prepared data"
        )


def load_encoder(path, schema: Schema | None = None, device="cpu"):
    """-> (encoder in eval mode, checkpoint). Checks the schema when given."""
    ckpt = load_checkpoint(path)
    if schema is not None:
        check_schema(ckpt, schema)
    return saved_encoder(ckpt, device), ckpt


def saved_encoder(ckpt: Checkpoint, device="cpu"):
    """The encoder of a loaded checkpoint, built from its own config, in eval mode on `device`."""
    from ..models.build import build_encoder

    encoder = build_encoder(ckpt.config, ckpt.schema, ckpt.state["trainer"].get("max_len", 1024))
    encoder.load_state_dict(ckpt.state["encoder"])
    return encoder.to(device).eval()
