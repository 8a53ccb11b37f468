"""No host sync per training step: the loss parts and their finiteness stay on the device and are
read every train.sync_every steps and at the epoch's end. Counted on CPU two ways:
- the calls that read a tensor to the host, patched, as made from the project's own code;
- every operator the step dispatches (torch's own internals included), through a dispatch mode
  that flags what waits for the device on a GPU: a scalar read (`.item()`, `bool(t)`,
  `torch.equal`), and an output whose shape depends on the data (boolean-mask indexing, `nonzero`,
  `masked_select`, `unique`, ...);
- a tensor made from host data in the project's code (`torch.tensor`, `torch.as_tensor` of
  numbers), which on a GPU is a blocking copy (the collators aside: their host batches are copied
  from pinned memory without blocking).
Exempt by design: torch's optimizer reads its step counters, which stay on the host on a GPU too;
the CPU GRU path (models/recurrence.py) reads host lengths, where a GPU runs cuDNN's GRU instead."""
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_pendulum
from torch.utils._python_dispatch import TorchDispatchMode

import mlem_ray
from mlem_ray.config import make_config
from mlem_ray.training import LocalReporter, NonFiniteLossError, train

PACKAGE = str(Path(mlem_ray.__file__).parent)
HOST_CPU_PATH = str(Path(PACKAGE) / "models" / "recurrence.py")  # host tensors by design (CPU only)
DATA_PATH = str(Path(PACKAGE) / "data")  # the collators build host batches by design
OPTIMIZER_PATH = str(Path(torch.__file__).parent / "optim")  # host step counters by design
READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
_aten = torch.ops.aten
# Operators that wait for the device on a GPU whatever their arguments: a scalar read to the host,
# or an output whose size the host learns only from the data.
WAITING_OPS = {_aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.equal.default,
               _aten.nonzero.default, _aten.argwhere.default, _aten.masked_select.default,
               _aten._unique.default, _aten._unique2.default, _aten.unique_dim.default,
               _aten.unique_consecutive.default, _aten.bincount.default, _aten.repeat_interleave.Tensor}
INDEX_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}
SMALL = {"model.hidden": 8, "data.batch_size": 8, "data.slice_min": 5, "data.slice_max": 20,
         "train.steps_per_epoch": 8, "train.sync_every": 4, "train.epochs": 2}
DECODER = {"model.decoder_width": 16, "model.decoder_layers": 1}
# The step alone: no selection probe, a few validation rows, one thread (tiny ops on a loaded
# 2-core machine spend more time waiting for a second thread than computing).
STEP_ONLY = {"train.selection": "none", "train.val_size": 8, "train.threads": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pendulum(tmp_path_factory.mktemp("sync") / "d", 120, seed=5)


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A CoLES checkpoint for the MLEM step."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    threads = torch.get_num_threads()
    train(make_config("coles", {**SMALL, **STEP_ONLY, "data.path": str(data), "train.epochs": 1}),
          LocalReporter(run, stream=None))
    torch.set_num_threads(threads)
    return run / "best"


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # train.threads sets the process's; later tests keep theirs


def _exempt(frame) -> bool:
    while frame is not None:
        name = frame.f_code.co_filename
        if name == HOST_CPU_PATH or name.startswith(OPTIMIZER_PATH):
            return True
        frame = frame.f_back
    return False


def _project_caller(frame):
    """The innermost frame of mlem_ray's code, or None when torch alone made the call."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return frame
        frame = frame.f_back
    return None


def _mask_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class DeviceWaits(TorchDispatchMode):
    """Appends (operator, file, line) to `calls` for each operator that would wait for a GPU."""

    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flagged = func in WAITING_OPS or (func in INDEX_OPS and _mask_index(args))
        if func is _aten.repeat_interleave.Tensor and (kwargs or {}).get("output_size") is not None:
            flagged = False
        here = sys._getframe(1)
        if flagged and not _exempt(here):
            where = _project_caller(here)
            self.calls.append((str(func), where.f_code.co_filename if where else "torch", where.f_lineno if where else 0))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads(monkeypatch):
    """A list that grows by one for each read of a tensor to the host made from mlem_ray's code,
    and for each operator that would wait for the device (DeviceWaits), while the test runs."""
    calls = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE) and caller != HOST_CPU_PATH:
                calls.append((_name, caller, sys._getframe(1).f_lineno))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)

        def made(data, *a, _original=original, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if (not isinstance(data, torch.Tensor) and caller.startswith(PACKAGE)
                    and not caller.startswith(DATA_PATH) and caller != HOST_CPU_PATH):
                calls.append((f"torch.{_name}", caller, sys._getframe(1).f_lineno))
            return _original(data, *a, **k)

        monkeypatch.setattr(torch, name, made)
    with DeviceWaits(calls):
        yield calls


def test_the_counter_sees_mask_indexing_nonzero_and_scalar_reads(host_reads):
    x = torch.arange(6.0)
    x[x > 2]
    torch.nonzero(x)
    torch.equal(x, x)
    assert len(host_reads) == 3  # from torch's own code too: none of these calls is mlem_ray's
    torch.ops.aten._local_scalar_dense(x[0])
    assert len(host_reads) == 4


@pytest.mark.parametrize("method", ["coles", "coles-infonce", "generative", "mlem", "supervised"])
def test_steps_between_reads_make_no_host_sync(data, teacher, tmp_path, keep_threads, host_reads, method):
    per_step = {}  # (epoch, step) -> reads made from that step's start to the next one's

    def mark(epoch, step, batch):
        per_step[(epoch, step)] = len(host_reads)
        return batch

    extra = {"mlem": {"objective.teacher": str(teacher)},
             "coles-infonce": {"objective.contrastive_loss": "infonce"}}.get(method, {})
    cfg = make_config(method.split("-")[0], {**SMALL, **DECODER, **STEP_ONLY, "data.path": str(data), **extra})
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
