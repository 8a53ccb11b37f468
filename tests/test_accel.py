"""Precision (fp32 / bf16 / fp16 autocast), batch prefetching and DataLoader workers, on CPU."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from mlem_ray.config import ConfigError, make_config
from mlem_ray.training.accel import Precision, prefetch
from mlem_ray.training.loop import train

# Losses of these runs on the code before precision and prefetching existed (commit 0f8de31):
# fp32 must keep giving them.
GOLDEN = {
    # (train_loss, val_loss) of epoch 0, then of epoch 1
    "coles": [57.44281514485677, 43.00417269193209, 51.74175771077474, 39.795693764319786],
    "generative": [55.960296074549355, 8.271021842956543, 6.16068967183431, 1.6105332191173847],
}


class Keep:
    def __init__(self):
        self.metrics, self.states = [], []

    def report(self, metrics, checkpoint):
        self.metrics.append(metrics)
        if checkpoint is not None:
            self.states.append(torch.load(checkpoint / "model.pt", weights_only=True))


@pytest.fixture(scope="module")
def data(pendulum_data):
    return pendulum_data(60, seed=3)


def run(data, method, **overrides):
    cfg = make_config(method, {"data.path": str(data), "data.batch_size": 8, "model.hidden": 32, "train.epochs": 2,
                               "train.steps_per_epoch": 3, "train.threads": 1, "train.device": "cpu",
                               "data.slice_min": 5, "data.slice_max": 20, **overrides})
    keep = Keep()
    train(cfg, keep)
    return keep


def losses(keep):
    return [x for m in keep.metrics for x in (m["train_loss"], m["val_loss"])]


@pytest.mark.parametrize("method", ["coles", "generative"])
def test_fp32_results_do_not_change(data, method):
    got = losses(run(data, method))
    assert got == pytest.approx(GOLDEN[method], rel=1e-4)


def test_prefetch_and_loader_workers_give_the_same_run(data):
    """Batches built ahead (thread) or in worker processes are the same batches in the same order;
    the thread is gone once the epoch (cut short by steps_per_epoch) ends."""
    plain = losses(run(data, "coles"))
    assert losses(run(data, "coles", **{"train.prefetch": 2})) == plain
    assert not [t for t in threading.enumerate() if t.name == "mlem_ray-prefetch"]
    assert losses(run(data, "coles", **{"train.loader_workers": 1})) == plain


def test_bf16_autocast_trains_on_cpu(data):
    """bf16 changes the numbers a little (so autocast is really on), not the outcome; weights stay fp32."""
    keep = run(data, "generative", **{"train.precision": "bf16"})
    flat, gold = losses(keep), GOLDEN["generative"]
    assert all(torch.isfinite(torch.tensor(flat)))
    assert flat != pytest.approx(gold, rel=1e-6)
    assert flat == pytest.approx(gold, rel=0.1)
    assert all(v.dtype == torch.float32 for v in keep.states[-1]["encoder"].values() if v.is_floating_point())


def test_fp16_uses_a_grad_scaler_and_checkpoints_it(data):
    keep = run(data, "coles", **{"train.precision": "fp16"})
    assert all(torch.isfinite(torch.tensor(losses(keep))))
    scaler = keep.states[-1]["trainer"]["grad_scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler


def test_autocast_reaches_the_decoder_in_bf16():
    p = Precision("bf16", torch.device("cpu"))
    layer = torch.nn.Linear(4, 4)
    with p.autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with Precision("fp32", torch.device("cpu")).autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_prefetch_raises_the_producers_error_and_stops_early():
    def batches():
        yield 1
        yield 2
        raise RuntimeError("broken batch")

    it = prefetch(batches(), depth=2)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(RuntimeError, match="broken batch"):
        next(it)
    gen = prefetch(iter(range(1000)), depth=2)
    assert next(gen) == 0
    gen.close()  # a `break` in the loop: the thread is joined, not left running
    assert not [t for t in threading.enumerate() if t.name == "mlem_ray-prefetch"]


def test_bad_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="train.precision"):
        make_config("coles", {"train.precision": "fp8"})
    with pytest.raises(ConfigError, match="loader_workers"):
        make_config("coles", {"train.loader_workers": -1})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_malloc_keeps_freed_memory_unless_told_not_to():
    """After reuse_freed_memory() a 64 MiB tensor comes from malloc's heap (which keeps freed
    memory for reuse), not from its own mmap (which is unmapped on free); MLEM_RAY_MALLOC=default
    leaves malloc alone. mallinfo2().hblkhd: the bytes malloc holds in mmap'd blocks."""
    probe = ("import ctypes, torch; from mlem_ray.training.accel import reuse_freed_memory; "
             "on = reuse_freed_memory(); x = torch.empty(2**24); "
             "Info = type('Info', (ctypes.Structure,), {'_fields_': [(f'f{i}', ctypes.c_size_t) for i in range(10)]}); "
             "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = Info; "
             "print(on, libc.mallinfo2().f4 >= 2**26)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    on = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    if "mallinfo2" in on.stderr:
        pytest.skip("glibc older than 2.33: no mallinfo2")
    assert on.stdout.split() == ["True", "False"], on.stderr
    off = subprocess.run([sys.executable, "-c", probe], env={**env, "MLEM_RAY_MALLOC": "default"},
                         capture_output=True, text=True, timeout=120)
    assert off.stdout.split() == ["False", "True"], off.stderr
