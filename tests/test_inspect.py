"""A finished two-stage sweep: its own outputs (one leaderboard row per trial, TensorBoard files per
trial, the teacher handed to the MLEM stage), and the same sweep seen through the ecosystem's own
tools: TensorBoard's HParams data API (a real `tensorboard` server), `optuna.load_study` on the
sweep's journal, an MLflow file store, and the report's plots. One tiny sweep (2 + 2 trials)
serves every test of the module."""
import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import FAST_PROBE, ray_instance, two_stage_space

ray = pytest.importorskip("ray")
optuna = pytest.importorskip("optuna")

from mlem_ray.evaluation.leaderboard import pick_teacher, read as read_leaderboard  # noqa: E402
from mlem_ray.sweep import optuna_storage  # noqa: E402
from mlem_ray.sweep.pipeline import SweepJob, run_sweep  # noqa: E402

pytestmark = pytest.mark.ray

SPACE = two_stage_space(
    {"trials": 2, "scheduler": "none", "epochs": 1, "finalists": 2},
    {"trials": 2, "scheduler": "none", "epochs": 1, "finalists": 1}, steps=2,
    teacher_params={"objective.margin": {"type": "float", "low": 0.3, "high": 1.0}},
    mlem_params={"model.decoder_width": {"type": "int", "low": 16, "high": 32, "step": 16}})
SWEPT = {"optim.lr", "objective.margin", "objective.w_align", "model.decoder_width"}


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, pendulum_data):
    """-> (the sweep's directory, run_sweep's summary)."""
    root = tmp_path_factory.mktemp("inspect")
    data = pendulum_data(200, seed=3)
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    trackers = [name for name in ("mlflow", "wandb") if _installed(name)]  # optional extras
    with ray_instance():  # only for the sweep: the tests below read what it left
        summary = run_sweep(SweepJob(out=str(root / "sweep"), data=str(data), space=str(space), **FAST_PROBE,
                                     trackers=trackers))
    return root / "sweep", summary


@pytest.fixture(scope="module")
def sweep(sweep_run):
    return sweep_run[0]


def _installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def plugin_events(event_file):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for event in EventFileLoader(str(event_file)).Load():
        for value in event.summary.value:
            yield value.metadata.plugin_data.plugin_name, value.tag


def test_two_stage_sweep_tensorboard_leaderboard_and_teacher(sweep_run):
    out, summary = sweep_run
    board = read_leaderboard(out)
    teacher_rows = board[board["stage"] == "teacher"]
    mlem_rows = board[board["stage"] == "mlem"]
    # one row per completed trial, none twice
    assert len(teacher_rows) == 2 and len(mlem_rows) == 2 and board["trial_id"].is_unique
    trial_dirs = {p.name for p in (out / "teacher").iterdir() if p.is_dir()}
    assert set(teacher_rows["trial_id"]) == trial_dirs
    # TensorBoard: Tune's curves per trial, and one HParams session beside them with the downstream metrics
    for trial in trial_dirs:
        tags = [t for f in (out / "teacher" / trial).rglob("events.out.tfevents*") for t in plugin_events(f)]
        plugins = {p for p, _ in tags}
        assert "hparams" in plugins and "scalars" in plugins, plugins
        assert any(t.endswith("val_loss") for _, t in tags)
        session = [t for f in (out / "teacher" / trial / "hparams").rglob("events.out.tfevents*")
                   for _, t in plugin_events(f)]
        assert "downstream/tree_cv_mse_mean" in session and "trial/val_loss" in session
        assert "_hparams_/session_start_info" in session and "_hparams_/experiment" not in tags
    assert list((out / "tensorboard_leaderboard").glob("events.out.tfevents*"))
    # the MLEM stage trained against the best-scored stage-1 checkpoint
    teacher = json.loads((out / "teacher.json").read_text())
    expected = pick_teacher(teacher_rows.to_dict("records"), finalists=2)
    assert teacher["trial_id"] == expected["trial_id"]
    assert teacher["primary_value"] == min(teacher_rows["primary_value"])
    for ckpt in mlem_rows["checkpoint"]:
        cfg = yaml.safe_load((Path(ckpt) / "config.yaml").read_text())
        assert cfg["objective"]["teacher"] == teacher["checkpoint"]
    assert summary["stages"]["mlem"]["best"]["trial_id"] in set(mlem_rows["trial_id"])


def test_tensorboard_hparams_one_group_per_trial_with_every_stage_key(sweep):
    board = read_leaderboard(sweep)
    assert len(board) == 4
    port = _free_port()
    tb = subprocess.Popen([str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(sweep),
                           "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/hparams"
    request = {"experimentName": "", "startIndex": 0, "sliceSize": 100,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]}
    try:
        groups, deadline = [], time.time() + 90
        while time.time() < deadline:
            try:
                groups = _post(f"{base}/session_groups", request).get("sessionGroups", [])
                if len(groups) >= len(board):
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(1)
        experiment = _post(f"{base}/experiment", {"experimentName": ""})
    finally:
        tb.terminate()
        tb.wait(timeout=20)
    columns = {h["name"] for h in experiment["hparamInfos"]}
    assert SWEPT | {"stage", "method"} <= columns, columns
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"trial/probe_score", "trial/val_loss", "downstream/tree_cv_mse_mean", "downstream/tree_test_r2"} <= metrics
    # one session group per trial (not Tune's extra row), each with the stage's swept values and
    # the in-trial and downstream metrics
    assert sorted(g["name"] for g in groups) == sorted(board["trial_id"])
    for g in groups:
        row = board[board["trial_id"] == g["name"]].iloc[0]
        assert g["hparams"]["stage"] == row["stage"] and g["hparams"]["method"] == row["method"]
        for key, value in json.loads(row["params"]).items():
            assert math.isclose(g["hparams"][key], value), key
        values = {m["name"]["tag"]: m["value"] for m in g["metricValues"]}
        assert math.isclose(values["downstream/tree_cv_mse_mean"], row["tree_cv_mse_mean"], rel_tol=1e-6)
        assert math.isclose(values["trial/val_loss"], row["val_loss"], rel_tol=1e-6)
        assert math.isclose(values["trial/probe_score"], row["selection_value"], rel_tol=1e-6)


def test_each_stage_study_opens_with_optuna_load_study(sweep):
    board = read_leaderboard(sweep)
    storage = optuna_storage.study_storage(sweep)
    assert sorted(optuna_storage.study_names(sweep)) == ["mlem", "teacher"]
    for stage in ("teacher", "mlem"):
        study = optuna.load_study(study_name=stage, storage=storage)
        trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        rows = board[board["stage"] == stage]
        assert len(trials) == len(rows) == len(study.trials) == 2
        row_params = [json.loads(p) for p in rows["params"]]
        for t in trials:  # each Optuna trial is one of the stage's Tune trials
            assert any(set(t.params) == set(p) and all(math.isclose(t.params[k], p[k]) for k in p) for p in row_params)
        assert all(math.isfinite(t.value) for t in trials)
        assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # probe_score: higher is better


def test_mlflow_store_holds_one_run_per_trial_with_downstream_scores(sweep):
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    board = read_leaderboard(sweep)
    for stage in ("teacher", "mlem"):
        experiment = client.get_experiment_by_name(f"{sweep.name}-{stage}")
        runs = client.search_runs([experiment.experiment_id])
        rows = board[board["stage"] == stage]
        assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(rows["trial_id"])
        for run in runs:
            row = rows[rows["trial_id"] == run.data.tags["trial_id"]].iloc[0]
            for key in json.loads(row["params"]):
                assert key in run.data.params
            assert "val_loss" in run.data.metrics and "probe_score" in run.data.metrics
            assert math.isclose(run.data.metrics["downstream/tree_cv_mse_mean"], row["tree_cv_mse_mean"], rel_tol=1e-6)


def _wait_json(url, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def test_optuna_dashboard_lists_every_stage_study(sweep):
    pytest.importorskip("optuna_dashboard")
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), str(optuna_storage.path(sweep)),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        studies = _wait_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        details = {s["study_name"]: _wait_json(f"http://127.0.0.1:{port}/api/studies/{s['study_id']}?after=0")
                   for s in studies}
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert sorted(details) == ["mlem", "teacher"]
    for detail in details.values():
        assert detail["directions"] == ["maximize"] and len(detail["trials"]) == 2
        assert all(t["state"] == "Complete" and len(t["values"]) == 1 for t in detail["trials"])


def test_report_writes_optuna_plots_selection_scatter_and_projector(sweep):
    from mlem_ray.sweep.report import build_report

    text = build_report(sweep)
    out = sweep / "report"
    for stage in ("teacher", "mlem"):
        for kind in ("parallel_coordinate", "slice", "optimization_history"):
            assert (out / f"optuna_{stage}_{kind}.png").stat().st_size > 5000, (stage, kind, text)
    assert (out / "selection_vs_downstream.png").stat().st_size > 5000
    assert "teacher: probe_score rho" in text and "teacher: val_loss rho" in text
    projector = out / "projector"
    config = (projector / "projector_config.pbtxt").read_text()
    best = read_leaderboard(sweep).query("stage == 'mlem'").sort_values("primary_value").iloc[0]
    assert f"mlem_{best['trial_id']}" in config
    metadata = next(projector.rglob("metadata.tsv")).read_text().splitlines()
    vectors = next(projector.rglob("tensors.tsv")).read_text().splitlines()
    assert metadata[0].split("\t") == ["id", "split", "L"] and len(metadata) - 1 == len(vectors) > 10
    assert len(vectors[0].split("\t")) == 16  # model.hidden


def test_spearman_is_the_rank_correlation_over_finite_pairs():
    from mlem_ray.sweep.report_plots import spearman

    rho, n = spearman([1, 2, 3, 4, float("nan")], [10, 20, 30, 45, 1])
    assert (rho, n) == (1.0, 4)
    assert spearman([1, 2, 3], [3, 2, 1]) == (-1.0, 3)
    assert math.isnan(spearman([1, 2], [2, 1])[0])


def test_wandb_offline_run_per_trial_holds_its_curves_and_downstream_scores(sweep):
    pytest.importorskip("wandb")
    board = read_leaderboard(sweep)
    for trial in board["trial_id"]:
        # the trial's own run (Tune's WandbLoggerCallback), then the downstream scores resumed into
        # the same run id; `wandb sync` uploads both into one run
        runs = sorted((sweep / "wandb").glob(f"offline-run-*-{trial}"))
        records = [next(r.glob("*.wandb")).read_bytes() for r in runs]
        assert any(b"val_loss" in rec for rec in records), trial
        assert any(b"downstream/tree_cv_mse_mean" in rec for rec in records), trial


def test_a_tracker_that_is_not_installed_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import importlib.util

    from mlem_ray.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = main(["sweep", "--out", str(tmp_path / "s"), "--tracker", "wandb"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == ("mlem-ray sweep: error: --tracker wandb: wandb is not installed; "
                                         "pip install 'mlem_ray[wandb]'")
    assert not (tmp_path / "s").exists()
