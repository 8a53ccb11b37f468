"""The evaluation actors: a pool of them per sweep (`EvaluatorPool`), each scoring finished trials'
best checkpoints downstream, all appending to the one leaderboard.

- Work arrives from a Tune callback as `score` calls, one finished trial's record each
  (evaluation/trial.py: TrialRecord), sent to the pool's least busy actor (and a
  trial already sent somewhere back to that same actor, so a re-submitted call queues behind the
  first); an actor runs its calls one at a time, so they queue in its mailbox.
- Every result is appended to the leaderboard (evaluation/leaderboard.py: one row object per
  trial, then the snapshot) *before* the call returns, and written to TensorBoard next to the
  trial. Before scoring, an actor looks for the trial's row, its own or another actor's: a trial
  is scored once, whichever actor is asked.
- A scoring that raises (NaN embeddings, a probe that cannot fit) is a row with status failed and
  the reason: the call returns, the stage goes on, and the trial is not scored again. A trial that
  itself errored gets a row with status errored (`record_error`), replaced if it is later re-run
  and scored.
- After a crash Ray restarts the actor (`max_restarts`) and retries the calls the dead process
  had not finished (`max_task_retries`, a few times: a call that kills the process every time
  must not loop forever). An exception raised by a call is never retried (Ray's default
  `retry_exceptions=False` for actor methods; tests/test_faults.py checks both). The new instance
  reloads the leaderboard, so a row is never lost and a trial is never scored twice. The other
  actors of the pool go on meanwhile (tests/test_eval_pool.py).
- The aggregates baseline is scored by one actor of the pool only (`baseline_owner`), the one
  that gets the first trial. Each actor warms up as it is created (`warm_up`: the scoring code
  imported, the data set opened, the owner's baseline scored) while the first trials train.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time

from .. import storage
from . import leaderboard
from .subsets import DEFAULT_PROBE_SIZE, DEFAULT_QUALITY_SIZE, DEFAULT_TEST_SIZE, scoring_rows
from .trial import TrialRecord


class Evaluator:
    """The actor's body (plain class, so it is testable without Ray)."""

    def __init__(self, sweep_dir, data_path, folds: int = 5, seed: int = 0, tree_iters: int = 300,
                 robustness: bool = False, threads: int = 0, device: str = "cpu", aggregates: bool = True,
                 probe_size: int = DEFAULT_PROBE_SIZE, test_size: int = DEFAULT_TEST_SIZE,
                 quality_size: int = DEFAULT_QUALITY_SIZE, baseline_owner: bool = True):
        self.sweep_dir = str(sweep_dir)  # a path or an object-store URI (storage.py)
        self.data_path = str(data_path)
        self.folds, self.seed, self.tree_iters, self.robustness = folds, seed, tree_iters, robustness
        # threads 0: as many as the CPUs Ray reserved for this actor (at least 1).
        self.threads, self.device = threads, device
        # The rows every score and the baseline use (evaluation/subsets.py): the same for all trials.
        self.sizes = dict(probe_size=probe_size, test_size=test_size, quality_size=quality_size)
        # The aggregate-features baseline: scored once per sweep (one data set), and every trial's
        # embedding is also scored concatenated with it (tree probe, `with_aggregates_*` columns).
        self.aggregates = aggregates
        # In a pool one actor scores it: N copies of the same (large) fit would be N-fold waste.
        self.baseline_owner = baseline_owner
        self.baseline = leaderboard.read_baseline(self.sweep_dir)
        self.board = leaderboard.read(self.sweep_dir)
        self.restored_rows = len(self.board)
        self.scored = 0  # scorings this process ran (not rows found done)
        # Scores run one at a time; the lock lets info() and rows() answer while a score is running.
        self._scoring = threading.Lock()
        self._seqs = None

    def _data(self):
        """The data set, opened (memory-mapped; a URI copied once per node) at the warm-up or the
        first score, and kept: opening reads every sequence's id, split and target, an O(N) cost no trial repeats."""
        if self._seqs is None:
            from ..data.prepared import EventSequences

            self._seqs = EventSequences.open(self.data_path)
        return self._seqs

    def warm_up(self) -> None:
        """What the first score would otherwise start with, done while the first trials train:
        import the scoring code, open the data set and, in the baseline's owner, score the
        aggregates baseline (on a tiny sweep about 7 s that the first row no longer waits for).
        A failure here is left for that first score to meet again and record as the trial's."""
        with self._scoring:
            try:
                from . import evaluate  # noqa: F401  (torch and the probes: seconds of imports)

                self._data()
                with self._thread_limit():
                    self._ensure_baseline()
            except Exception:  # noqa: BLE001 (the first score raises it again, as that trial's failure)
                pass

    def _on_board(self, trial_id: str) -> dict | None:
        """The trial's row: this actor's view, unless it is missing or only says the trial
        errored; then the row object another actor of the pool (or an earlier process) may have
        written since this one loaded the board."""
        mine = None
        if not self.board.empty:
            hit = self.board[self.board["trial_id"] == trial_id]
            mine = hit.iloc[0].to_dict() if len(hit) else None
        if mine is not None and mine.get("status") != leaderboard.ERRORED:
            return mine
        found = leaderboard.read_row(self.sweep_dir, trial_id)
        return found if found is not None else mine

    def _done(self, trial_id: str) -> dict | None:
        """The trial's row, unless it only says the trial errored (a re-run may score it yet)."""
        row = self._on_board(trial_id)
        return None if row is None or row.get("status") == leaderboard.ERRORED else row

    def _add(self, row: leaderboard.Row) -> dict:
        """Append `row`, replacing an errored row of the same trial. -> the row as stored."""
        board = self.board
        if not board.empty:
            board = board[board["trial_id"] != row.trial_id].reset_index(drop=True)
        self.board = leaderboard.append(self.sweep_dir, board, row)
        return row.to_json()

    def record_error(self, trial: TrialRecord, error: str) -> dict:
        """A row saying the trial errored and why (the report lists it); a trial already on the
        board is left as it is."""
        with self._scoring:
            found = self._on_board(trial.trial_id)
            if found is not None:
                return found
            return self._add(_row(trial, status=leaderboard.ERRORED, error=leaderboard.reason(error)))

    def score(self, trial: TrialRecord) -> dict:
        """Score the trial's checkpoint once; a repeated call for the same trial returns the stored
        row. The trial's in-trial selection figures are stored beside the downstream score."""
        with self._scoring:
            return self._score(trial)

    def _score(self, trial: TrialRecord) -> dict:
        done = self._done(trial.trial_id)
        if done is not None:
            return done
        self.scored += 1
        try:
            with self._thread_limit():
                result = self._evaluate(trial.checkpoint)
                self._ensure_baseline()
            metric, mode = leaderboard.downstream_metric(result["task"])
            status, error = leaderboard.OK, ""
        except Exception as e:  # noqa: BLE001 (any failure of one trial's scoring is that trial's)
            # Deterministic for this checkpoint: recorded, not retried; the stage goes on.
            result, metric, mode = {}, "", ""
            status, error = leaderboard.FAILED, leaderboard.reason(e)
        row = self._add(_row(
            trial, **trial.selection.columns(), primary_metric=metric, primary_mode=mode,
            primary_value=float(result[metric]) if metric else float("nan"), status=status, error=error,
            metrics={k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}))
        if status == leaderboard.OK:
            self._tensorboard(row, trial.params, trial.trial_dir)
        return row

    def _thread_limit(self):
        """A context in which the probes' native thread pools use this actor's share of the CPUs."""
        from threadpoolctl import threadpool_limits

        return threadpool_limits(self.threads or cpu_share())

    def _ensure_baseline(self) -> None:
        """Score the aggregates baseline if this actor owns it and it is not scored yet (the
        caller limits the threads)."""
        if self.aggregates and self.baseline_owner and self.baseline is None:
            self.baseline = self._score_baseline()

    def _score_baseline(self) -> dict:
        """The aggregate features alone, through the same probes as the trials' embeddings."""
        from .aggregates import cached_features, score_features

        seqs = self._data()
        rows = scoring_rows(seqs, self.sizes["probe_size"], self.sizes["test_size"])  # the trials' rows
        features, names = cached_features(seqs, rows)  # kept: every trial's with_aggregates reuses them
        scores = score_features(features, seqs, rows, kinds=("tree", "linear"), folds=self.folds, seed=self.seed,
                                tree_iters=self.tree_iters)
        metric, mode = leaderboard.downstream_metric(seqs.schema.task)
        baseline = {"method": "aggregates", "features": len(names), "primary_metric": metric, "primary_mode": mode,
                    "primary_value": float(scores[metric]),
                    **{k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
        leaderboard.write_baseline(self.sweep_dir, baseline)
        return baseline

    def baseline_scores(self) -> dict | None:
        return self.baseline

    def _evaluate(self, checkpoint) -> dict:
        from .evaluate import evaluate_checkpoint

        return evaluate_checkpoint(checkpoint, self._data(), kinds=("tree", "linear"), folds=self.folds,
                                   seed=self.seed, robustness=self.robustness, tree_iters=self.tree_iters,
                                   device=self.device, with_aggregates=self.aggregates, **self.sizes)

    def _tensorboard(self, row: dict, params: dict, trial_dir: str) -> None:
        """The trial's HParams session (swept values, in-trial and downstream metrics) beside its
        own curves (evaluation/hparams.py), and the leaderboard as scalars in
        `<sweep>/tensorboard_leaderboard`."""
        from tensorboardX import SummaryWriter

        from . import hparams

        where = trial_dir or storage.join(self.sweep_dir, row["stage"], row["trial_id"])
        with _writable(storage.join(where, hparams.RUN)) as local:
            hparams.write_session(local, hparams.session_hparams(params, row["stage"], row["method"]),
                                  hparams.session_metrics(row), group=row["reseed_of"] or row["trial_id"])
        with _writable(storage.join(self.sweep_dir, "tensorboard_leaderboard")) as local, SummaryWriter(local) as w:
            step = len(storage.listdir(storage.join(self.sweep_dir, leaderboard.ROWS)))  # rows of the whole pool
            w.add_scalar(f"leaderboard/{row['stage']}/{row['primary_metric']}", row["primary_value"], step)
            w.add_text("leaderboard/trial", f"{row['stage']} {row['trial_id']} {row['method']}: "
                       f"{row['primary_metric']}={row['primary_value']:.4g}", step)

    def rows(self) -> list[dict]:
        """Every row of the sweep (the whole pool's)."""
        return leaderboard.read(self.sweep_dir).to_dict("records")

    def info(self) -> dict:
        return {"pid": os.getpid(), "rows": len(self.board), "restored_rows": self.restored_rows,
                "scored": self.scored}


def _row(trial: TrialRecord, **columns) -> leaderboard.Row:
    """The trial's leaderboard row: who it is, then `columns` (its scores or its error)."""
    return leaderboard.Row(trial_id=trial.trial_id, stage=trial.stage, method=trial.method,
                           checkpoint=str(trial.checkpoint), params=json.dumps(trial.params, sort_keys=True, default=str),
                           seed=int(trial.seed), reseed_of=trial.reseed_of, scored_at=time.time(), **columns)


def cpu_share() -> int:
    """Whole CPUs Ray reserved for the calling actor or task (1 outside Ray or with a fractional
    or zero share): the probes' thread count, so scoring never takes CPUs that trials hold."""
    try:
        import ray

        if not ray.is_initialized():
            return 1
        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)))
    except Exception:  # noqa: BLE001 (no runtime context: not inside Ray)
        return 1


@contextlib.contextmanager
def _writable(location: str):
    """A local directory for a writer that wants one (TensorBoard): storage.writable_dir. Each
    writer makes a new event file, so an upload adds files and never replaces one."""
    with storage.writable_dir(location, prefix="mlem_ray_tb_") as local:
        yield str(local)


def get_or_create_actor(sweep_dir, data_path, name: str, cpus: float = 0.0, gpus: float = 0.0, **kwargs):
    """The named actor of this sweep (docs/design.md#ray-patterns-and-pitfalls): created once, found again by name.
    With `gpus` > 0 it holds that share of a GPU and embeds on it (the probes stay on CPU)."""
    import ray

    actor_cls = ray.remote(Evaluator)
    return actor_cls.options(name=name, namespace="mlem_ray", get_if_exists=True, num_cpus=cpus, num_gpus=gpus,
                             **ACTOR_OPTIONS).remote(str(sweep_dir), str(data_path),
                                                     device="cuda" if gpus > 0 else "cpu", **kwargs)


def pool_names(first: str, count: int) -> list[str]:
    """The actors' names: the first is the sweep's evaluator name as it always was (a resumed or
    older driver finds it), the others `<first>-1`, `<first>-2`, ..."""
    return [first] + [f"{first}-{i}" for i in range(1, count)]


def get_or_create_pool(sweep_dir, data_path, first_name: str, count: int, cpus: float = 0.0, gpus: float = 0.0,
                       **kwargs) -> "EvaluatorPool":
    """`count` named evaluation actors, each holding `cpus` CPUs and `gpus` of a GPU; the first
    scores the aggregates baseline."""
    names = pool_names(first_name, max(1, count))
    actors = [get_or_create_actor(sweep_dir, data_path, n, cpus=cpus, gpus=gpus, baseline_owner=(i == 0), **kwargs)
              for i, n in enumerate(names)]
    return EvaluatorPool(names, actors)


class EvaluatorPool:
    """The driver's side of the pool: which actor scores which trial.

    A trial goes to the actor with the fewest calls still running (ties: the first actor, so the
    first trial reaches the baseline's owner), and a trial sent before goes back to the same
    actor: its second call queues behind the first and returns the row the first wrote, so a
    driver that re-submits every finished trial (tuner.run_stage) waits for each without scoring
    any twice. The Tune callback and the stage's driver code share one pool per set of names in
    this process (`shared`)."""

    _shared: dict[tuple, "EvaluatorPool"] = {}

    def __init__(self, names: list[str], actors: list | None = None):
        self.names = list(names)
        self._actors = list(actors) if actors is not None else None
        self._assigned: dict[str, int] = {}  # trial id -> index of its actor
        self._pending: list[list] = [[] for _ in self.names]  # refs not known to be finished
        self._lock = threading.Lock()  # the callback and the driver may submit from two threads
        EvaluatorPool._shared[tuple(self.names)] = self

    @classmethod
    def shared(cls, names) -> "EvaluatorPool":
        """This process's pool over `names` (found again by a restored Tune callback)."""
        key = tuple([names] if isinstance(names, str) else names)
        return cls._shared.get(key) or cls(list(key))

    @classmethod
    def of(cls, actor, names) -> "EvaluatorPool":
        """A pool from what a caller holds: a pool as it is, or one actor handle and its name."""
        if isinstance(actor, EvaluatorPool):
            return actor
        key = [names] if isinstance(names, str) else list(names)
        pool = cls._shared.get(tuple(key))
        if pool is None or pool._actors is None:
            pool = cls(key, [actor] if len(key) == 1 else None)
        return pool

    @property
    def actors(self) -> list:
        if self._actors is None:
            import ray

            self._actors = [ray.get_actor(n, namespace="mlem_ray") for n in self.names]
        return self._actors

    def _choose(self, trial_id: str) -> int:
        import ray

        if trial_id in self._assigned:
            return self._assigned[trial_id]
        for i, refs in enumerate(self._pending):
            if refs:
                _, running = ray.wait(refs, num_returns=len(refs), timeout=0)
                self._pending[i] = running
        index = min(range(len(self.names)), key=lambda i: (len(self._pending[i]), i))
        self._assigned[trial_id] = index
        return index

    def score(self, trial: TrialRecord):
        """Evaluator.score on the trial's actor. -> its ObjectRef."""
        with self._lock:
            index = self._choose(trial.trial_id)
            ref = self.actors[index].score.remote(trial)
            self._pending[index].append(ref)
        return ref

    def record_error(self, trial: TrialRecord, error: str):
        with self._lock:
            index = self._choose(trial.trial_id)
            return self.actors[index].record_error.remote(trial, error)

    def warm_up(self) -> None:
        """Evaluator.warm_up on every actor, not waited for: it holds each actor's scoring lock, so
        the first score queues behind it."""
        for actor in self.actors:
            actor.warm_up.remote()

    def info(self, timeout_s: float = 60.0) -> list[dict]:
        import ray

        return ray.get([a.info.remote() for a in self.actors], timeout=timeout_s)

    def baseline_scores(self):
        """The baseline owner's answer (an ObjectRef)."""
        return self.actors[0].baseline_scores.remote()

    def kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        EvaluatorPool._shared.pop(tuple(self.names), None)


# Restart the process whenever it dies; retry a call the dead process had not finished a few times
# (a call that kills the process every time gives up with RayActorError); never retry a call that
# raised (retry_exceptions stays False for every method). Three calls at once: the warm-up or a
# running score, one waiting on the scoring lock, and info()/rows(), which never wait behind them.
ACTOR_OPTIONS = dict(max_concurrency=3, max_restarts=-1, max_task_retries=3, lifetime=None)
