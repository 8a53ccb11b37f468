"""train.compile: a compiled step trains as the eager one does (losses within float tolerance).
On CPU the loop's integration is checked through torch.compile with the aot_eager backend
(graph capture and AOT autograd, as inductor uses them, without its minute-long C++ code
generation on 2 cores); with a GPU, inductor itself."""
import pytest
import torch
from helpers import make_pendulum

from mlem_ray.config import ConfigError, make_config
from mlem_ray.training import LocalReporter, train
from mlem_ray.training import loop

SMALL = {"model.hidden": 8, "model.encoder": "transformer", "model.heads": 2, "data.batch_size": 8,
         "data.slice_min": 5, "data.slice_max": 20, "train.steps_per_epoch": 3, "train.epochs": 1,
         "train.val_size": 8}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pendulum(tmp_path_factory.mktemp("compile") / "d", 60, seed=4)


def _losses(data, tmp_path, how, device="cpu"):
    torch._dynamo.reset()
    cfg = make_config("coles", {**SMALL, "data.path": str(data), "train.compile": how, "train.device": device})
    m = train(cfg, LocalReporter(tmp_path / how, stream=None))
    return m["train_loss"], m["val_loss"]


def test_compiled_and_eager_steps_give_the_same_losses(data, tmp_path, monkeypatch):
    monkeypatch.setitem(loop.COMPILE_BACKENDS, "inductor", "aot_eager")
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = _losses(data, tmp_path, "inductor")
    assert counters["stats"]["unique_graphs"] > 0  # the step did run through compiled graphs
    eager = _losses(data, tmp_path, "none")
    assert compiled == pytest.approx(eager, rel=1e-4)
    with pytest.raises(ConfigError, match="train.compile"):
        make_config("coles", {"train.compile": "graphs"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor's own code generation: GPU runs only")
def test_inductor_on_a_gpu_gives_the_eager_losses(data, tmp_path):
    assert _losses(data, tmp_path, "inductor", "cuda") == pytest.approx(_losses(data, tmp_path, "none", "cuda"), rel=1e-3)
