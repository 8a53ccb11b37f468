"""The schema of a prepared data set: what fields it has and how they were encoded.

It is written as ``schema.json`` next to the sequences and copied into every checkpoint, so a
checkpoint can be checked against the data it is asked to embed (``fingerprint``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from ..errors import DataError  # noqa: F401  (re-exported)

PAD_CODE = 0  # categorical padding
UNSEEN_CODE = 1  # unseen at fit time or rarer than min_count
FIRST_CODE = 2

TASKS = ("binary", "multiclass", "regression")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "days": 86400.0}


@dataclass(frozen=True)
class CategoricalField:
    name: str
    vocabulary: tuple[str, ...]  # vocabulary[i] has code i + FIRST_CODE, by descending frequency

    @property
    def num_codes(self) -> int:
        """Embedding table size: padding, unseen, then the vocabulary."""
        return len(self.vocabulary) + FIRST_CODE


@dataclass(frozen=True)
class NumericField:
    name: str
    center: float  # median on the training split
    scale: float  # robust spread (IQR / 1.349) on the training split; stored values are (x - center) / scale


@dataclass(frozen=True)
class Schema:
    id_col: str
    time_col: str
    time_unit: str
    categorical: tuple[CategoricalField, ...]
    numeric: tuple[NumericField, ...]
    task: str | None = None
    target_col: str | None = None
    class_names: tuple[str, ...] = ()
    max_len: int = 0
    min_len: int = 0
    seed: int = 0
    counts: dict = field(default_factory=dict)
    source: str = ""
    # The sequences' shards in row order, as the writer recorded them (prepared.shard_entry):
    # name, sequences, events, code_max. Empty for data sets written before shards were listed,
    # whose one shard is ``sequences``.
    shards: tuple = ()

    @property
    def cat_names(self) -> list[str]:
        return [f.name for f in self.categorical]

    @property
    def num_names(self) -> list[str]:
        return [f.name for f in self.numeric]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Identity of what a model trained on this data depends on (fields, vocabulary sizes)."""
        key = {
            "categorical": [(f.name, f.num_codes) for f in self.categorical],
            "numeric": [f.name for f in self.numeric],
            "time_unit": self.time_unit,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def with_shards(self, shards) -> Schema:
        return replace(self, shards=tuple(dict(s) for s in shards))

    def to_json(self) -> str:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint()
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        """Keys this version does not know (a newer writer's additions) are ignored on purpose: they
        cannot change how the fields it does know were encoded. A missing or mistyped known key is
        refused (raises KeyError, TypeError or ValueError; `load` names the file)."""
        if not isinstance(d, dict):
            raise TypeError(f"a JSON object was expected, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["categorical"] = tuple(
            CategoricalField(str(c["name"]), tuple(str(v) for v in c["vocabulary"])) for c in d["categorical"]
        )
        d["numeric"] = tuple(NumericField(str(n["name"]), float(n["center"]), float(n["scale"])) for n in d["numeric"])
        if not isinstance(d.get("class_names") or [], list):
            raise TypeError("'class_names' must be a list")
        d["class_names"] = tuple(str(c) for c in d.get("class_names") or ())
        d["shards"] = tuple(dict(s) for s in d.get("shards") or ())
        for s in d["shards"]:
            if not isinstance(s.get("name"), str) or not _is_count(s.get("sequences")):
                raise ValueError("a shard entry needs a name and a sequence count")
            if "events" in s and not _is_count(s["events"]):
                raise ValueError(f"shard {s['name']!r}: 'events' must be a count")
            code_max = s.get("code_max", {})
            if not isinstance(code_max, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in code_max.values()):
                raise ValueError(f"shard {s['name']!r}: 'code_max' must map fields to integer codes")
        if d.get("task") is not None and d["task"] not in TASKS:
            raise ValueError(f"unknown task {d['task']!r} (tasks: {', '.join(TASKS)})")
        for key in ("target_col",):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise TypeError(f"{key!r} must be text")
        if not isinstance(d.get("counts", {}), dict):
            raise TypeError("'counts' must be an object")
        if not isinstance(d.get("source", ""), str):
            raise TypeError("'source' must be text")
        for key in ("id_col", "time_col", "time_unit"):
            if not isinstance(d[key], str):
                raise TypeError(f"{key!r} must be text")
        if d["time_unit"] not in TIME_UNITS:
            raise ValueError(f"unknown time_unit {d['time_unit']!r}")
        for key in ("max_len", "min_len", "seed"):
            if key in d and (not isinstance(d[key], int) or isinstance(d[key], bool)):
                raise TypeError(f"{key!r} must be an integer")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        if path.is_dir():
            path = path / "schema.json"
        if not path.exists():
            raise DataError(f"{path} not found: is this a prepared data set (mlem-ray data ...)?")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path} is unreadable or not JSON ({str(e)[:120]}); re-run `mlem-ray data` to prepare it") from None
        except KeyError as e:
            raise DataError(f"{path} lacks the key {e}; it was not written by `mlem-ray data`, re-run it") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{path} is malformed ({str(e)[:120]}); re-run `mlem-ray data` to prepare it") from None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_prepared(path) -> None:
    """Refuse, with one line, a --data that is not a prepared data set (no schema.json), before
    anything opens it. `path`: a directory or a storage URI."""
    from .. import storage

    try:
        found = storage.exists(storage.join(path, "schema.json"))
    except OSError as e:
        raise DataError(f"--data {path}: cannot read it ({storage.explain(e)})") from None
    if not found:
        raise DataError(f"--data {path} is not a prepared data set (no schema.json); create it with `mlem-ray data ...`")
