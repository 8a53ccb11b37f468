"""train.val_size: each epoch validates on a fixed subset of the validation split, chosen by the
data set alone: the same rows in every epoch, for every train.seed, and after --resume."""
import numpy as np
import pytest
from helpers import make_pendulum

from mlem_ray.cli import main
from mlem_ray.config import ConfigError, make_config
from mlem_ray.data import EventSequences
from mlem_ray.training import LocalReporter, train
from mlem_ray.training import loop
from mlem_ray.training.loop import validation_rows

SMALL = {"model.hidden": 8, "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20,
         "train.steps_per_epoch": 2, "train.val_size": 10}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 120 sequences, 20% validation: about 24 validation rows, more than val_size
    return make_pendulum(tmp_path_factory.mktemp("val") / "d", 120, seed=3)


@pytest.fixture
def validated(monkeypatch):
    """The rows each validate() call fed to the model, one sorted array per epoch."""
    seen: list[np.ndarray] = []
    original = loop.Recipe.validate

    def spy(self):
        collate, rows = self.val_collate, []

        def recording(batch_rows):
            rows.extend(int(r) for r in batch_rows)
            return collate(batch_rows)

        self.val_loader.collate_fn = recording
        try:
            return original(self)
        finally:
            self.val_loader.collate_fn = collate
            seen.append(np.sort(rows))

    monkeypatch.setattr(loop.Recipe, "validate", spy)
    return seen


def test_the_subset_is_part_of_the_validation_split_and_fixed_by_the_data_alone(data):
    seqs = EventSequences.open(data)
    val = seqs.indices("val")
    assert len(val) > 10
    rows = validation_rows(seqs, False, 10)
    assert len(rows) == 10 and np.isin(rows, val).all() and len(np.unique(rows)) == 10
    assert np.array_equal(rows, validation_rows(EventSequences.open(data), False, 10))  # reopened: the same
    assert np.array_equal(validation_rows(seqs, False, 0), val)  # 0: the whole split
    assert np.array_equal(validation_rows(seqs, False, 10_000), val)
    labelled = validation_rows(seqs, True, 10)
    assert not np.isnan(seqs.targets[labelled]).any()
    with pytest.raises(ConfigError, match="val_size"):
        make_config("coles", {"train.val_size": -1})


def test_every_epoch_and_every_seed_validate_on_the_same_rows(data, tmp_path, validated):
    for seed in (0, 7):
        cfg = make_config("coles", {**SMALL, "data.path": str(data), "train.epochs": 2, "train.seed": seed})
        train(cfg, LocalReporter(tmp_path / f"s{seed}", stream=None))
    assert len(validated) == 4 and all(len(r) == 10 for r in validated)
    assert all(np.array_equal(validated[0], r) for r in validated[1:])
    # a supervised run validates on labelled rows of the split
    cfg = make_config("supervised", {**SMALL, "data.path": str(data), "train.epochs": 1})
    train(cfg, LocalReporter(tmp_path / "sup", stream=None))
    seqs = EventSequences.open(data)
    assert len(validated[-1]) == 10 and not np.isnan(seqs.targets[validated[-1]]).any()


def test_a_resumed_run_validates_on_the_rows_it_started_with(data, tmp_path, validated):
    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    run = str(tmp_path / "run")
    common = ["pretrain", "--data", str(data), "--method", "coles", "--out", run, *sets]
    assert main([*common, "--epochs", "1"]) == 0
    assert main([*common, "--epochs", "3", "--resume"]) == 0
    assert len(validated) == 3
    assert all(np.array_equal(validated[0], r) for r in validated[1:])
