"""One account of a sweep's cluster resources: what the evaluation actors hold, what each trial
asks Ray for, and how many trials run at once.

Inputs: the cluster (`Cluster.from_ray`: every alive node's CPUs and GPUs; a GPU's memory where a
probe measured it) and what the user asked for (`Request`: --eval-actors, --eval-gpus,
--trials-per-gpu, --gpus-per-worker, --workers-per-trial). `plan` turns them into a `Plan`, or
refuses with one line what cannot fit: GPUs that do not exist, actors that leave no CPU or GPU to
the trials, K trials per GPU whose measured peak memory exceeds the GPU's.

How trials run (issue: inline GPU trials):
- one worker, CPU or GPU: the loop runs inline in the Tune trial (no Ray Train start-up), on the
  GPU share Ray assigned (`{"cpu": c, "gpu": g}`);
- more than one worker: the trial drives a Ray Train TorchTrainer; its own process holds
  TRAIN_DRIVER_CPUS, each worker TRAIN_WORKER_CPUS and --gpus-per-worker.
With --trials-per-gpu K, a one-worker trial asks for 1/K of a GPU and an even share of the GPU
nodes' CPUs left after the actors; Ray then packs K trials on each GPU.

The evaluation actors come out first: each holds ACTOR_CPUS (on a cluster of fewer than
SMALL_CLUSTER_CPUS CPUs none: it would block a trial slot on a 2-core machine, where it scores
between trial completions) and --eval-gpus. Their default number is what the CPUs left after the
trials' needs (the stage's trials at once, at least one CPU each) allow, at least one, at most one
per trial.

Kept free of heavy imports (Ray only inside Cluster.from_ray): the arithmetic is tested on CPU
with injected figures (tests/test_resources.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ResourceError, SweepError

ACTOR_CPUS = 1.0  # an evaluation actor scores single-threaded (Evaluator threads=1)
SMALL_CLUSTER_CPUS = 4
TRAIN_DRIVER_CPUS = 0.5  # a multi-worker trial's own process only drives its TorchTrainer
TRAIN_WORKER_CPUS = 0.5
# Of a GPU's memory, the share K packed trials may fill together: the allocator's fragmentation
# and the cuDNN/cuBLAS workspaces vary from step to step around the measured peak.
MEMORY_HEADROOM = 0.9
AUTO_MAX_K = 8  # `--trials-per-gpu auto` sizes the actor pool for at most this many, then measures
_EPS = 1e-9


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    gpu_memory_bytes: float = 0.0  # one GPU's memory (the smallest), when measured; 0: unknown

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @classmethod
    def of(cls, cpus: float, gpus: float = 0.0, gpu_memory_bytes: float = 0.0) -> Cluster:
        """A one-node cluster (tests, and a cluster_resources() total without per-node figures)."""
        return cls((Node(float(cpus), float(gpus)),), float(gpu_memory_bytes))

    @classmethod
    def from_ray(cls, gpu_memory_bytes: float = 0.0) -> Cluster:
        import ray

        nodes = tuple(Node(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
                      for n in ray.nodes() if n.get("Alive"))
        if not nodes:
            total = ray.cluster_resources()
            return cls.of(total.get("CPU", 1.0), total.get("GPU", 0.0), gpu_memory_bytes)
        return cls(nodes, float(gpu_memory_bytes))


@dataclass(frozen=True)
class Request:
    """What the user asked for (the sweep flags), plus how many trials a stage could run at once."""

    eval_actors: int = 0  # 0: as many as the CPUs left after the trials allow
    eval_gpus: float = 0.0  # per actor
    trials_per_gpu: int = 0  # K; 0: no packing (a one-worker GPU trial holds --gpus-per-worker)
    gpus_per_worker: float = 0.0
    workers_per_trial: int = 1
    cpus_per_trial: float = 1.0
    demand: int = 1  # the most trials a stage asks to run at once (its trials or its max_concurrent)


@dataclass(frozen=True)
class Plan:
    eval_actors: int
    actor_cpus: float
    actor_gpus: float
    inline: bool  # one-worker trials run the loop in the Tune trial; else a TorchTrainer per trial
    trial_cpus: float  # inline: the trial's CPUs; Ray Train: its driver's
    trial_gpus: float  # inline: the trial's GPU share (0: CPU)
    workers: int
    worker_cpus: float
    worker_gpus: float
    trials_per_gpu: int  # 0: not packing
    max_concurrent: int  # trials at once the resources allow (a stage's own max_concurrent may lower it)

    @property
    def threads(self) -> int:
        """torch threads per trial (inline) or per worker."""
        return max(1, int((self.trial_cpus if self.inline else self.worker_cpus) + _EPS))

    @property
    def uses_gpu(self) -> bool:
        return self.trial_gpus > 0 or self.worker_gpus > 0

    def trial_resources(self) -> dict:
        """What tune.with_resources asks for one trial's own process."""
        return {"cpu": self.trial_cpus, **({"gpu": self.trial_gpus} if self.trial_gpus > 0 else {})}

    def describe(self) -> str:
        actors = f"{self.eval_actors} evaluation actor(s) x {self.actor_cpus:g} CPU" + (
            f" + {self.actor_gpus:g} GPU" if self.actor_gpus else "")
        if self.inline:
            trial = f"{self.trial_cpus:g} CPU" + (f" + {self.trial_gpus:g} GPU" if self.trial_gpus else "")
            how = "inline"
        else:
            trial = f"{self.workers} Ray Train workers x ({self.worker_cpus:g} CPU" + (
                f" + {self.worker_gpus:g} GPU" if self.worker_gpus else "") + f") + {self.trial_cpus:g} CPU driver"
            how = "Ray Train"
        packed = f", {self.trials_per_gpu} per GPU" if self.trials_per_gpu else ""
        return f"{actors}; trials {how}, {trial} each{packed}, up to {self.max_concurrent} at once"


def _floor_to(x: float, step: float) -> float:
    """Round down to a multiple of `step` (Ray keeps resource amounts to 4 decimals)."""
    return math.floor(x / step + _EPS) * step


def _slots(have: float, each: float) -> int:
    return int(math.floor(have / each + _EPS)) if each > 0 else 10**9


def _trial_gpu_share(req: Request) -> float:
    if req.trials_per_gpu:
        return 1.0 / req.trials_per_gpu
    return req.gpus_per_worker * req.workers_per_trial


def _check_request(cluster: Cluster, req: Request) -> None:
    if req.trials_per_gpu < 0 or req.eval_actors < 0 or req.eval_gpus < 0 or req.gpus_per_worker < 0:
        raise SweepError("--trials-per-gpu, --eval-actors, --eval-gpus and --gpus-per-worker must be >= 0")
    if req.trials_per_gpu and req.workers_per_trial > 1:
        raise SweepError(f"--trials-per-gpu packs one-worker trials; with --workers-per-trial "
                         f"{req.workers_per_trial} give each worker its share with --gpus-per-worker")
    if req.trials_per_gpu and req.gpus_per_worker:
        raise SweepError("--trials-per-gpu K already gives each trial 1/K of a GPU; drop --gpus-per-worker")
    have = cluster.gpus
    if req.trials_per_gpu and have <= 0:
        raise ResourceError(f"asked for --trials-per-gpu {req.trials_per_gpu} but the Ray cluster has 0 GPUs; drop the "
                            "flag to train on CPU or join a GPU cluster with --address")
    need = req.gpus_per_worker * req.workers_per_trial
    if need > 0 and have < need - _EPS:
        raise ResourceError(f"asked for {need:g} GPUs ({req.workers_per_trial} worker(s) x --gpus-per-worker "
                            f"{req.gpus_per_worker:g}) but the Ray cluster has {have:g}; drop the flag to train on "
                            "CPU or join a GPU cluster with --address")
    if req.eval_gpus > have + _EPS:
        raise SweepError(f"--eval-gpus {req.eval_gpus:g} but the Ray cluster has {have:g} GPUs; drop the flag to "
                         "evaluate on CPU")


def _trial_cpu_need(req: Request) -> float:
    if req.workers_per_trial > 1:
        return TRAIN_DRIVER_CPUS + TRAIN_WORKER_CPUS * req.workers_per_trial
    return 1.0 if req.trials_per_gpu else req.cpus_per_trial  # packed trials: at least one thread each


def _auto_actors(cluster: Cluster, req: Request, actor_cpus: float) -> int:
    """As many actors as the CPUs (and GPUs, with --eval-gpus) left after the stage's trials at
    once allow; at least one, at most one per trial."""
    if actor_cpus <= 0:
        return 1  # a small cluster: one actor, scoring between trial completions
    gpu_share = _trial_gpu_share(req)
    at_once = max(1, req.demand)
    at_once = min(at_once, _slots(cluster.cpus, _trial_cpu_need(req)))
    if gpu_share > 0:
        at_once = min(at_once, _slots(cluster.gpus, gpu_share))
    free_cpus = cluster.cpus - at_once * _trial_cpu_need(req)
    n = _slots(max(0.0, free_cpus), actor_cpus)
    if req.eval_gpus > 0:
        n = min(n, _slots(max(0.0, cluster.gpus - at_once * gpu_share), req.eval_gpus))
    return max(1, min(n, max(1, req.demand)))


def plan(cluster: Cluster, req: Request, trial_gpu_bytes: float = 0.0) -> Plan:
    """The account (see the module docstring). `trial_gpu_bytes`: one trial's measured peak GPU
    memory (sweep/probe.py), checked against the GPU's when both are known and trials are packed."""
    _check_request(cluster, req)
    actor_cpus = ACTOR_CPUS if cluster.cpus >= SMALL_CLUSTER_CPUS else 0.0
    n = req.eval_actors or _auto_actors(cluster, req, actor_cpus)
    cpus_left = cluster.cpus - n * actor_cpus
    gpus_left = cluster.gpus - n * req.eval_gpus
    if req.eval_gpus and gpus_left < -_EPS:
        raise SweepError(f"--eval-actors {n} x --eval-gpus {req.eval_gpus:g} = {n * req.eval_gpus:g} GPUs but the Ray "
                         f"cluster has {cluster.gpus:g}; use fewer actors or a smaller --eval-gpus")
    k = req.trials_per_gpu
    if k and trial_gpu_bytes > 0 and cluster.gpu_memory_bytes > 0:
        check_fits(k, trial_gpu_bytes, cluster.gpu_memory_bytes)
    if req.workers_per_trial > 1:
        per_gpu = req.gpus_per_worker * req.workers_per_trial
        per_cpu = TRAIN_DRIVER_CPUS + TRAIN_WORKER_CPUS * req.workers_per_trial
        slots = _slots(cpus_left, per_cpu)
        if per_gpu > 0:
            slots = min(slots, _slots(gpus_left, per_gpu))
        _refuse_empty(slots, n, req, cpus_left, gpus_left, per_cpu, per_gpu)
        return Plan(n, actor_cpus, req.eval_gpus, False, TRAIN_DRIVER_CPUS, 0.0, req.workers_per_trial,
                    TRAIN_WORKER_CPUS, req.gpus_per_worker, 0, slots)
    gpu = 1.0 / k if k else req.gpus_per_worker
    if gpu > 0:
        slots = _slots(max(0.0, gpus_left), gpu)
        if k:
            # An even share of the CPUs of the nodes that hold the GPUs, after the actors placed there.
            gpu_node_cpus = sum(nd.cpus for nd in cluster.nodes if nd.gpus > 0)
            other_cpus = cluster.cpus - gpu_node_cpus
            actors_on_gpu_nodes = max(0.0, n * actor_cpus - other_cpus)
            cpus = _floor_to((gpu_node_cpus - actors_on_gpu_nodes) / max(1, slots), 0.01)
            if slots and cpus < 0.01:
                raise ResourceError(f"--trials-per-gpu {k}: {slots} trials at once would get no CPU of the GPU nodes' "
                                    f"{gpu_node_cpus:g}; use a smaller K")
        else:
            cpus = req.cpus_per_trial
            slots = min(slots, _slots(cpus_left, cpus))
        _refuse_empty(slots, n, req, cpus_left, gpus_left, cpus, gpu)
        return Plan(n, actor_cpus, req.eval_gpus, True, cpus, gpu, 1, 0.0, 0.0, k, slots)
    slots = _slots(cpus_left, req.cpus_per_trial)
    _refuse_empty(slots, n, req, cpus_left, gpus_left, req.cpus_per_trial, 0.0)
    return Plan(n, actor_cpus, req.eval_gpus, True, req.cpus_per_trial, 0.0, 1, 0.0, 0.0, 0, slots)


def _refuse_empty(slots: int, n: int, req: Request, cpus_left: float, gpus_left: float, per_cpu: float,
                  per_gpu: float) -> None:
    if slots >= 1:
        return
    short = (f"{max(0.0, gpus_left):g} GPUs where a trial needs {per_gpu:g}" if per_gpu > 0 and gpus_left < per_gpu - _EPS
             else f"{max(0.0, cpus_left):g} CPUs where a trial needs {per_cpu:g}")
    raise SweepError(f"{n} evaluation actor(s) (--eval-actors, --eval-gpus) leave the trials {short}; "
                     "use fewer actors or join a larger cluster")


def max_trials_per_gpu(trial_gpu_bytes: float, gpu_memory_bytes: float) -> int:
    """The most trials of that peak memory that fit on one GPU (MEMORY_HEADROOM of it)."""
    return int(math.floor(MEMORY_HEADROOM * gpu_memory_bytes / trial_gpu_bytes + _EPS)) if trial_gpu_bytes > 0 else 0


def check_fits(k: int, trial_gpu_bytes: float, gpu_memory_bytes: float) -> None:
    """Refuse K packed trials whose peaks together exceed the GPU's memory (with headroom)."""
    fit = max_trials_per_gpu(trial_gpu_bytes, gpu_memory_bytes)
    if k > fit:
        gib = 2.0 ** 30
        raise ResourceError(f"--trials-per-gpu {k}: a trial of this stage peaks at {trial_gpu_bytes / gib:.2f} GiB of "
                            f"GPU memory (measured), so {k} need {k * trial_gpu_bytes / gib:.1f} GiB of the GPU's "
                            f"{gpu_memory_bytes / gib:.1f} GiB (x {MEMORY_HEADROOM:g} headroom); at most {fit} fit")


def auto_candidates(cluster: Cluster, trial_gpu_bytes: float, limit: int = AUTO_MAX_K) -> list[int]:
    """The K values `--trials-per-gpu auto` measures: 1, 2, 4, ... up to what the memory allows
    (and `limit`)."""
    fit = max_trials_per_gpu(trial_gpu_bytes, cluster.gpu_memory_bytes) if cluster.gpu_memory_bytes > 0 else limit
    out, k = [], 1
    while k <= min(fit, limit):
        out.append(k)
        k *= 2
    return out or [1]


def choose_trials_per_gpu(throughput: dict[int, float], gain: float = 1.1) -> int:
    """From measured aggregate throughput at each K (sequences/s of K concurrent trials on one
    GPU), the K past which doubling gains less than `gain` x: more trials at once only help while
    they fill the GPU, and every extra one splits the CPUs and slows each trial."""
    ks = sorted(k for k, v in throughput.items() if v > 0)
    if not ks:
        return 1
    chosen = ks[0]
    for k in ks[1:]:
        if throughput[k] >= gain * throughput[chosen]:
            chosen = k
        else:
            break
    return chosen


def parse_trials_per_gpu(text) -> int | str:
    """--trials-per-gpu: a positive integer or `auto` ("" / 0: no packing)."""
    if text in (None, "", 0, "0"):
        return 0
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        k = int(str(text))
    except ValueError:
        k = -1
    if k < 1:
        raise SweepError(f"--trials-per-gpu must be a positive integer or auto, got {text}")
    return k
