"""The one account of a sweep's resources (sweep/resources.py), on CPU with injected cluster and
memory figures: evaluation actors reserved out of what trials get, K trials per GPU, the
inline-vs-Ray-Train choice, and the refusals of what cannot fit."""
import pytest

from mlem_ray.errors import ResourceError, SweepError
from mlem_ray.sweep.resources import (Cluster, Node, Request, auto_candidates, check_fits, choose_trials_per_gpu,
                                      max_trials_per_gpu, parse_trials_per_gpu, plan)

GIB = 2.0 ** 30


def test_a_small_cpu_machine_keeps_one_actor_that_blocks_no_trial():
    p = plan(Cluster.of(2), Request(demand=4))
    assert (p.eval_actors, p.actor_cpus, p.max_concurrent, p.inline) == (1, 0.0, 2, True)
    assert p.trial_resources() == {"cpu": 1.0}


def test_the_default_pool_takes_the_cpus_the_trials_leave():
    # 16 CPUs, a stage of 4 trials: the trials need 4, so 12 are free, but no more actors than trials
    p = plan(Cluster.of(16), Request(demand=4))
    assert (p.eval_actors, p.actor_cpus) == (4, 1.0)
    assert p.max_concurrent == 12  # trials get what the actors leave
    # a stage of 60 trials fills every CPU: one actor, and it is reserved out of the trials' CPUs
    p = plan(Cluster.of(16), Request(demand=60))
    assert (p.eval_actors, p.max_concurrent) == (1, 15)
    # two CPUs per trial: 8 trials need all 16
    assert plan(Cluster.of(16), Request(demand=60, cpus_per_trial=2)).max_concurrent == 7


def test_explicit_actors_are_reserved_and_refused_when_they_leave_nothing():
    p = plan(Cluster.of(8), Request(eval_actors=3, demand=10))
    assert (p.eval_actors, p.max_concurrent) == (3, 5)
    with pytest.raises(SweepError, match="4 evaluation actor.* leave the trials 0 CPUs"):
        plan(Cluster.of(4), Request(eval_actors=4))
    # actors on GPUs: their shares come out of the trials' GPUs
    p = plan(Cluster.of(16, gpus=2), Request(eval_actors=2, eval_gpus=0.5, trials_per_gpu=4, demand=16))
    assert p.max_concurrent == 4 and p.trial_gpus == 0.25  # (2 - 2 x 0.5) x 4
    with pytest.raises(SweepError, match="3 x --eval-gpus 1 = 3 GPUs but the Ray cluster has 2"):
        plan(Cluster.of(16, gpus=2), Request(eval_actors=3, eval_gpus=1))
    with pytest.raises(SweepError, match="leave the trials 0 GPUs where a trial needs 1"):
        plan(Cluster.of(16, gpus=1), Request(eval_actors=1, eval_gpus=1, gpus_per_worker=1))


def test_gpus_that_do_not_exist_are_refused():
    with pytest.raises(ResourceError, match="the Ray cluster has 0"):
        plan(Cluster.of(8), Request(gpus_per_worker=1))
    with pytest.raises(ResourceError, match="--trials-per-gpu 4 but the Ray cluster has 0 GPUs"):
        plan(Cluster.of(8), Request(trials_per_gpu=4))
    with pytest.raises(SweepError, match="--eval-gpus 1 but the Ray cluster has 0 GPUs"):
        plan(Cluster.of(8), Request(eval_gpus=1))
    with pytest.raises(ResourceError, match="asked for 4 GPUs .2 worker.s. x --gpus-per-worker 2. but the Ray cluster has 2"):
        plan(Cluster.of(8, gpus=2), Request(gpus_per_worker=2, workers_per_trial=2))


def test_k_trials_per_gpu_share_the_gpu_and_the_gpu_nodes_cpus():
    # one node, 16 CPUs, 1 GPU, K = 8: 8 trials need 8 CPUs, so 8 actors fit beside them
    p = plan(Cluster.of(16, gpus=1), Request(trials_per_gpu=8, demand=16))
    assert p.inline and p.trial_gpus == 0.125 and p.max_concurrent == 8
    assert (p.eval_actors, p.trial_cpus) == (8, 1.0)
    assert p.trial_resources() == {"cpu": 1.0, "gpu": 0.125}
    # two GPU nodes and a CPU-only node: the actors go to the CPU node, the trials split the GPU nodes' CPUs
    cluster = Cluster((Node(8, 2), Node(8, 2), Node(4, 0)))
    p = plan(cluster, Request(trials_per_gpu=4, eval_actors=2, demand=64))
    assert p.max_concurrent == 16 and p.trial_cpus == 1.0 and p.threads == 1
    p = plan(cluster, Request(trials_per_gpu=2, eval_actors=2, demand=64))
    assert p.max_concurrent == 8 and p.trial_cpus == 2.0 and p.threads == 2
    # more packed trials than CPUs: each gets a fraction (one torch thread), Ray still places them
    p = plan(Cluster.of(2, gpus=1), Request(trials_per_gpu=8, demand=8))
    assert p.eval_actors == 1 and p.actor_cpus == 0.0 and p.trial_cpus == 0.25 and p.max_concurrent == 8


def test_a_k_whose_trials_do_not_fit_in_gpu_memory_is_refused():
    h200 = 139 * GIB
    assert max_trials_per_gpu(287 * 2 ** 20, h200) == 446
    assert max_trials_per_gpu(20 * GIB, h200) == 6  # 0.9 x 139 / 20
    check_fits(6, 20 * GIB, h200)
    with pytest.raises(ResourceError, match=r"--trials-per-gpu 8: a trial of this stage peaks at 20.00 GiB .* "
                                            r"8 need 160.0 GiB of the GPU's 139.0 GiB .*at most 6 fit"):
        check_fits(8, 20 * GIB, h200)
    # the same refusal through the account, once the probe's figure is known
    cluster = Cluster.of(32, gpus=1, gpu_memory_bytes=h200)
    with pytest.raises(ResourceError, match="at most 6 fit"):
        plan(cluster, Request(trials_per_gpu=8), trial_gpu_bytes=20 * GIB)
    assert plan(cluster, Request(trials_per_gpu=4), trial_gpu_bytes=20 * GIB).max_concurrent == 4
    # memory unknown (no probe yet): the arithmetic alone
    assert plan(Cluster.of(32, gpus=1), Request(trials_per_gpu=8), trial_gpu_bytes=20 * GIB).max_concurrent == 8


def test_auto_measures_the_ks_that_fit_and_stops_where_doubling_stops_paying():
    cluster = Cluster.of(32, gpus=1, gpu_memory_bytes=139 * GIB)
    assert auto_candidates(cluster, 287 * 2 ** 20) == [1, 2, 4, 8]
    assert auto_candidates(cluster, 40 * GIB) == [1, 2]  # 3 fit, so 4 is not tried
    assert auto_candidates(Cluster.of(32, gpus=1), 1 * GIB, limit=4) == [1, 2, 4]
    assert choose_trials_per_gpu({1: 4000, 2: 7600, 4: 13000, 8: 14000}) == 4
    assert choose_trials_per_gpu({1: 4000, 2: 4100, 4: 16000}) == 1  # stops at the first flat step
    assert choose_trials_per_gpu({1: 4000}) == 1 and choose_trials_per_gpu({}) == 1


def test_one_worker_trials_run_inline_and_ray_train_only_for_more():
    p = plan(Cluster.of(8, gpus=1), Request(gpus_per_worker=1, demand=4))
    assert p.inline and p.trial_resources() == {"cpu": 1.0, "gpu": 1.0} and p.max_concurrent == 1
    p = plan(Cluster.of(8, gpus=2), Request(gpus_per_worker=1, workers_per_trial=2, demand=4))
    assert not p.inline and p.workers == 2 and p.worker_gpus == 1 and p.max_concurrent == 1
    assert p.trial_resources() == {"cpu": 0.5}  # the driver; the workers hold the GPUs
    p = plan(Cluster.of(2), Request(workers_per_trial=2, demand=4))
    assert not p.inline and p.max_concurrent == 1  # 0.5 + 2 x 0.5 CPUs per trial
    with pytest.raises(SweepError, match="packs one-worker trials"):
        plan(Cluster.of(8, gpus=2), Request(trials_per_gpu=2, workers_per_trial=2))
    with pytest.raises(SweepError, match="drop --gpus-per-worker"):
        plan(Cluster.of(8, gpus=2), Request(trials_per_gpu=2, gpus_per_worker=0.5))


def test_trials_per_gpu_flag_values():
    assert parse_trials_per_gpu("4") == 4 and parse_trials_per_gpu("auto") == "auto"
    assert parse_trials_per_gpu("") == 0 and parse_trials_per_gpu(None) == 0
    for bad in ("-1", "two", "0.5"):
        with pytest.raises(SweepError, match="positive integer or auto"):
            parse_trials_per_gpu(bad)


# ---------- the sweep's packing step, with the probe's figures injected ----------


def _session(tmp_path, trials_per_gpu: str, cluster):
    from mlem_ray.sweep.pipeline import SweepJob, _Session, resource_request

    settings = SweepJob(out=str(tmp_path), trials_per_gpu=trials_per_gpu)
    return _Session(str(tmp_path), settings, None, plan(cluster, resource_request(settings, 16)))


def _inject(monkeypatch, cluster, peak_bytes, rates):
    from mlem_ray.sweep import probe, resources

    calls = []

    def fake_probe(overrides, method, ks, stop_gain=None, **kw):
        calls.append(list(ks))
        assert overrides["model.hidden"] == 64 and overrides["optim.lr"] == 1e-3  # sizes high, the rest low
        return {k: {"aggregate_sequences_per_s": rates[k], "peak_bytes": peak_bytes,
                    "gpu_total_bytes": cluster.gpu_memory_bytes} for k in ks}

    monkeypatch.setattr(probe, "probe_on_gpu", fake_probe)
    monkeypatch.setattr(resources.Cluster, "from_ray", classmethod(lambda cls, gpu_memory_bytes=0.0: Cluster(
        cluster.nodes, gpu_memory_bytes)))
    return calls


def _stage():
    from mlem_ray.sweep.space import SearchSpace

    doc = {"method": "coles", "sweep": {"trials": 16, "epochs": 1},
           "params": {"model.hidden": {"type": "int", "low": 16, "high": 64}, "data.batch_size": 16,
                      "optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-1}}}
    return next(iter(SearchSpace.from_dict(doc).stages.values()))


def test_the_sweep_measures_a_trial_before_packing_and_refuses_a_k_that_does_not_fit(tmp_path, monkeypatch):
    from mlem_ray.sweep.pipeline import _packing_plan

    cluster = Cluster.of(32, gpus=1, gpu_memory_bytes=80 * GIB)
    calls = _inject(monkeypatch, cluster, 12 * GIB, {1: 1000.0})
    session = _session(tmp_path, "8", Cluster.of(32, gpus=1))
    with pytest.raises(ResourceError, match=r"--trials-per-gpu 8: .* peaks at 12.00 GiB .*at most 6 fit"):
        _packing_plan(session, "coles", _stage(), {"data.path": "x"}, 16)
    assert calls == [[1]]  # one trial measured alone, before any packing
    session = _session(tmp_path, "4", Cluster.of(32, gpus=1))
    p = _packing_plan(session, "coles", _stage(), {"data.path": "x"}, 16)
    assert p.trials_per_gpu == 4 and p.max_concurrent == 4 and p.eval_actors == session.plan.eval_actors
    import json

    assert json.loads((tmp_path / "gpu_probe_coles.json").read_text())["trials_per_gpu"] == 4


def test_auto_picks_k_from_the_measured_memory_and_throughput(tmp_path, monkeypatch):
    from mlem_ray.sweep.pipeline import _packing_plan

    cluster = Cluster.of(32, gpus=1, gpu_memory_bytes=80 * GIB)
    # memory allows 3 per GPU: 1 and 2 are measured, 4 is not
    calls = _inject(monkeypatch, cluster, 24 * GIB, {1: 1000.0, 2: 1900.0})
    assert _packing_plan(_session(tmp_path, "auto", Cluster.of(32, gpus=1)), "coles", _stage(), {}, 16
                         ).trials_per_gpu == 2
    assert calls == [[1], [2]]
    # plenty of memory; throughput stops growing past 4
    calls = _inject(monkeypatch, cluster, 1 * GIB, {1: 1000.0, 2: 1900.0, 4: 3500.0, 8: 3600.0})
    assert _packing_plan(_session(tmp_path, "auto", Cluster.of(32, gpus=1)), "coles", _stage(), {}, 16
                         ).trials_per_gpu == 4
    assert calls == [[1], [2, 4, 8]]


def test_a_one_worker_gpu_trial_runs_inline_on_its_share_and_only_more_workers_use_ray_train():
    from mlem_ray.sweep.tuner import TrialSettings

    inline = TrialSettings(stage=None, fixed={}, cpus_per_trial=0.25, workers=1, gpus_per_worker=0.125)
    assert not inline.distributed and inline.resources() == {"cpu": 0.25, "gpu": 0.125}
    assert TrialSettings(None, {}, 2.0).resources() == {"cpu": 2.0}  # a CPU trial as before
    train = TrialSettings(None, {}, 1.0, workers=2, gpus_per_worker=1.0)
    assert train.distributed and train.resources() == {"cpu": 0.5}  # its workers hold the GPUs
