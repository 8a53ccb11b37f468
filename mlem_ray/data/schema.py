"""The schema of a prepared data set: what fields it has and how they were encoded.

It is written as ``schema.json`` next to the sequences and copied into every checkpoint, so a
checkpoint can be checked against the data it is asked to embed (``fingerprint``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
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

    def to_json(self) -> str:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint()
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        d = dict(d)
        d.pop("fingerprint", None)
        d["categorical"] = tuple(
            CategoricalField(c["name"], tuple(c["vocabulary"])) for c in d["categorical"]
        )
        d["numeric"] = tuple(NumericField(**n) for n in d["numeric"])
        d["class_names"] = tuple(d.get("class_names") or ())
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        if path.is_dir():
            path = path / "schema.json"
        if not path.exists():
            raise DataError(f"{path} not found: is this a prepared data set (mlem-ray data ...)?")
        return cls.from_dict(json.loads(path.read_text()))
