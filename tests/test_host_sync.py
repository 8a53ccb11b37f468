"""No host sync per training step: the loss parts and their finiteness stay on the device and are
read every train.sync_every steps and at the epoch's end. Counted on CPU by patching the calls that
read a tensor to the host, as made from the project's own code (torch's optimizer reads its CPU
step counters by design; the CPU GRU path reads host lengths, which on a GPU stay cuDNN's)."""
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_pendulum

import mlem_ray
from mlem_ray.config import make_config
from mlem_ray.training import LocalReporter, NonFiniteLossError, train

PACKAGE = str(Path(mlem_ray.__file__).parent)
HOST_CPU_PATH = str(Path(PACKAGE) / "models" / "recurrence.py")  # host tensors by design (CPU only)
READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
SMALL = {"model.hidden": 8, "data.batch_size": 8, "data.slice_min": 5, "data.slice_max": 20,
         "train.steps_per_epoch": 8, "train.sync_every": 4, "train.epochs": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pendulum(tmp_path_factory.mktemp("sync") / "d", 120, seed=5)


@pytest.fixture
def host_reads(monkeypatch):
    """A list that grows by one for each read of a tensor to the host made from mlem_ray's code."""
    calls = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE) and caller != HOST_CPU_PATH:
                calls.append((_name, caller, sys._getframe(1).f_lineno))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("method", ["coles", "generative"])
def test_steps_between_reads_make_no_host_sync(data, tmp_path, host_reads, method):
    per_step = {}  # (epoch, step) -> reads made from that step's start to the next one's

    def mark(epoch, step, batch):
        per_step[(epoch, step)] = len(host_reads)
        return batch

    cfg = make_config(method, {**SMALL, "data.path": str(data), "model.decoder_width": 16, "model.decoder_layers": 1})
    train(cfg, LocalReporter(tmp_path / "run", stream=None), on_batch=mark)
    for epoch in range(2):
        for step in range(7):
            reads = per_step[(epoch, step + 1)] - per_step[(epoch, step)]
            if step % 4 == 3:  # the window of 4 steps is read after its last step
                assert reads > 0, "the read itself was not counted: the counter would see nothing"
            else:
                assert reads == 0, f"epoch {epoch} step {step}: {host_reads[per_step[(epoch, step)]:][:3]}"


def test_a_non_finite_loss_names_its_step_and_window_and_keeps_the_last_good_checkpoint(data, tmp_path):
    run = tmp_path / "run"

    def poison(epoch, step, batch):
        if epoch == 1 and step == 5:
            batch.num[0, 0, 0] = float("nan")
        return batch

    cfg = make_config("generative", {**SMALL, "data.path": str(data), "model.decoder_width": 16,
                                     "model.decoder_layers": 1, "train.epochs": 3})
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 5 \(found between steps 4 and 7;"):
        train(cfg, LocalReporter(run, stream=None), on_batch=poison)
    assert json.loads((run / "last" / "metrics.json").read_text())["epoch"] == 0
    state = torch.load(run / "last" / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["encoder"].values())


def test_a_non_finite_first_loss_names_the_inputs_that_could_cause_it(data, tmp_path):
    def extreme(epoch, step, batch):
        if step == 0:
            batch.num[:, :, 1] = float("inf") * batch.num_mask[:, :, 1]
        return batch

    cfg = make_config("generative", {**SMALL, "data.path": str(data), "model.decoder_width": 16,
                                     "model.decoder_layers": 1})
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 0 .*first step.*not the learning rate.*"
                                                 r"non-finite values in numeric field 'y'"):
        train(cfg, LocalReporter(tmp_path / "run", stream=None), on_batch=extreme)


def test_sums_read_once_per_window_equal_the_per_step_sums(data, tmp_path):
    """The epoch's train_loss is the same whether the window is read every step or every 4."""
    losses = []
    for every in (1, 4):
        cfg = make_config("coles", {**SMALL, "data.path": str(data), "train.sync_every": every})
        losses.append(train(cfg, LocalReporter(tmp_path / f"r{every}", stream=None))["train_loss"])
    assert losses[0] == losses[1]
