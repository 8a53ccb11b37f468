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
    from ..outputs import remove_stale, temp_name

    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_name(path.name), dir=path.parent))
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
    """`path`: a checkpoint directory, or its storage URI (copied once per node into a local cache).

    Everything is checked before it is handed out, so no reader meets a damaged checkpoint in a
    traceback halfway through its work: the files are there and readable, ``model.pt`` loads with
    ``weights_only`` and holds its ``encoder`` (tensors), ``objective`` and ``trainer`` entries,
    ``config.yaml`` is a valid config, ``schema.json`` a valid schema, and the encoder's tensors
    have exactly the names and shapes the config's model has (`check_encoder_state`). A refusal is
    a `CheckpointError` naming the file."""
    from .. import storage

    try:
        path = storage.local_copy(path)  # a plain path as it is
    except (OSError, storage.StorageError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({str(e).splitlines()[0][:200]})") from None
    path = Path(path)
    if not (path / "model.pt").exists():
        raise CheckpointError(f"{path} is not a checkpoint (no model.pt); pass a checkpoint directory")
    for name in ("config.yaml", "schema.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing: {path} is an incomplete checkpoint")
    model_file = path / "model.pt"
    try:
        state = torch.load(model_file, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt, truncated or foreign files
        raise CheckpointError(f"cannot load {model_file}: {_first_line(e)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{model_file} has an unknown checkpoint format; re-create the checkpoint with this version")
    for entry in ("encoder", "objective", "trainer"):
        value = state.get(entry)
        if not isinstance(value, dict):
            what = "has no" if value is None else "has a malformed"
            raise CheckpointError(f"{model_file} {what} {entry!r} entry: a damaged or foreign checkpoint")
    bad = next((k for k, v in state["encoder"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{model_file}: encoder entry {bad!r} is not a tensor: a damaged or foreign checkpoint")
    config_file = path / "config.yaml"
    try:
        config = Config.from_dict(yaml.safe_load(config_file.read_text()))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"{config_file} is unreadable or not YAML ({_first_line(e)})") from None
    except ConfigError as e:
        raise CheckpointError(f"{config_file}: {e}") from None
    try:
        schema = Schema.load(path / "schema.json")
    except DataError as e:
        raise CheckpointError(str(e)) from None
    metrics_file = path / "metrics.json"
    metrics = {}
    if metrics_file.exists():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{metrics_file} is unreadable or not JSON ({_first_line(e)})") from None
        if not isinstance(metrics, dict):
            raise CheckpointError(f"{metrics_file} is not a JSON object")
    ckpt = Checkpoint(path, config, schema, state, metrics)
    check_encoder_state(ckpt)
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _max_len(ckpt: Checkpoint) -> int:
    value = ckpt.state["trainer"].get("max_len", 1024)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{ckpt.path / 'model.pt'}: trainer max_len {value!r} is not a positive integer")
    return value


def check_state_fits(module: torch.nn.Module, state: dict, where: str) -> None:
    """Refuse a state dict whose tensor names or shapes differ from `module`'s, naming the first
    difference (`where`: what to name, e.g. the model.pt file and its entry). `load_state_dict`
    would raise too, but with one line per tensor, after the work that built the module."""
    expected = module.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise CheckpointError(f"{where} lacks tensor {name!r} that the config's model has: "
                                  "the checkpoint does not fit its config.yaml")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(state[name].shape)} where the config's "
                                  f"model has {tuple(tensor.shape)}: the checkpoint does not fit its config.yaml")
    extra = next((k for k in state if k not in expected), None)
    if extra is not None:
        raise CheckpointError(f"{where} holds tensor {extra!r} that the config's model does not have: "
                              "the checkpoint does not fit its config.yaml")


def check_encoder_state(ckpt: Checkpoint) -> None:
    """The encoder's tensors against the model its config.yaml and schema.json describe, built on
    the meta device (shapes only: no memory, no initialisation)."""
    from ..models.build import build_encoder

    try:
        with torch.device("meta"):
            encoder = build_encoder(ckpt.config, ckpt.schema, _max_len(ckpt))
    except (ValueError, RuntimeError) as e:  # a config the model classes reject
        raise CheckpointError(f"{ckpt.path / 'config.yaml'}: its model cannot be built ({_first_line(e)})") from None
    check_state_fits(encoder, ckpt.state["encoder"], f"{ckpt.path / 'model.pt'} (encoder)")


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

    encoder = build_encoder(ckpt.config, ckpt.schema, _max_len(ckpt))
    encoder.load_state_dict(ckpt.state["encoder"])  # names and shapes checked in load_checkpoint
    return encoder.to(device).eval()
