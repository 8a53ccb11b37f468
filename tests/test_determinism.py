"""Same seed, same step budget, same thread count: two processes log identical losses at the
default 2 threads (the README's "whatever the machine's load" across processes, not only inside
one, which is all tests/test_budget.py checks)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = r"""
import json, sys
from pathlib import Path
from mlem_ray.config import make_config
from mlem_ray.training import LocalReporter, train
out, data = Path(sys.argv[1]), Path(sys.argv[2])
cfg = make_config("coles", {"data.path": str(data), "model.hidden": 64, "data.batch_size": 32, "train.epochs": 2,
                            "train.steps_per_epoch": 3, "train.budget_steps": 6, "train.threads": 2, "train.seed": 0})
train(cfg, LocalReporter(out, stream=None))
print(json.dumps([(m["train_loss"], m["val_loss"]) for m in map(json.loads, open(out / "metrics.jsonl"))]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mlem_ray.data import pendulum, prepare, write_prepared
    from mlem_ray.data.ingest import IngestSpec

    path = tmp_path_factory.mktemp("det") / "p"
    events, targets = pendulum.generate(400, seed=0)
    spec = IngestSpec(id_col="id", time_col="time", num_cols=("x", "y"), target_col="L", task="regression")
    write_prepared(path, *prepare(events, spec, targets))
    return path


def test_two_processes_with_the_same_seed_and_budget_log_identical_losses_at_2_threads(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    runs = []
    for i in range(3):
        r = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / f"r{i}"), str(data)], env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert len(runs[0]) == 2
    assert runs[0] == runs[1] == runs[2], runs  # exact, not approximate
