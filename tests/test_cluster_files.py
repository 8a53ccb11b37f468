"""The deployment files in cluster/: every YAML parses and holds what its tool needs (checked with
Ray's own validators where Ray has one), and every `mlem-ray ...` / `python -m mlem_ray ...`
command in them and in cluster/README.md's code blocks is accepted by `mlem_ray.cli`'s parser;
the `ray ...` commands there are accepted by Ray's CLI. Fast: no Ray cluster is started."""
from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
README = CLUSTER / "README.md"
RAY_UP = CLUSTER / "gpu-cluster.yaml"
RAYJOB = CLUSTER / "rayjob.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
YAML_FILES = sorted([*CLUSTER.glob("*.yaml"), *CLUSTER.glob("*.yml")])

CONTROL = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
REDIRECT = {">", ">>", "<", ">&", "<&", "&>", ">|"}


# ---------------------------------------------------------------------------------------------
# helpers: shell commands out of text


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return re.sub(r"\\\n", " ", text).splitlines()


def tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def simple_commands(text: str) -> list[list[str]]:
    """Every simple command in shell text: lines split at control operators, redirections and
    leading VAR=value assignments removed; quoted arguments holding a command line (`ray exec
    CFG "cd x && mlem-ray ..."`) are searched too."""
    out: list[list[str]] = []
    for line in logical_lines(text):
        current: list[str] = []
        toks = tokens(line)
        i = 0
        while i < len(toks):
            tok = toks[i]
            if tok in CONTROL:
                out.append(current)
                current = []
            elif tok in REDIRECT:
                if current and current[-1].isdigit():
                    current.pop()
                i += 1  # the redirection target
            else:
                if re.search(r"\s", tok):
                    out.extend(simple_commands(tok))
                current.append(tok)
            i += 1
        out.append(current)
    cleaned = []
    for cmd in out:
        while cmd and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            cleaned.append(cmd)
    return cleaned


def mlem_argv(cmd: list[str]) -> list[str] | None:
    """The arguments after `mlem-ray` or `python -m mlem_ray` anywhere in a simple command (also
    after `ray job submit ... --`), or None when it runs neither."""
    for i, tok in enumerate(cmd):
        if os.path.basename(tok) == "mlem-ray":
            return cmd[i + 1:]
        if re.fullmatch(r"python(3(\.\d+)?)?", os.path.basename(tok)) and cmd[i + 1:i + 3] == ["-m", "mlem_ray"]:
            return cmd[i + 3:]
    return None


def code_blocks(markdown: str) -> list[tuple[int, str]]:
    """(first line number, text) of each fenced code block."""
    blocks = []
    for m in re.finditer(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S):
        blocks.append((markdown[:m.start()].count("\n") + 2, m.group(1)))
    return blocks


def yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def strings_in(obj, where: str = ""):
    """(key path, string) for every string value in parsed YAML."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings_in(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list):
        for n, v in enumerate(obj):
            yield from strings_in(v, f"{where}[{n}]")
    elif isinstance(obj, str):
        yield where, obj


def readme_commands() -> list[tuple[str, list[str]]]:
    cmds = []
    for first_line, block in code_blocks(README.read_text()):
        for cmd in simple_commands(block):
            cmds.append((f"README.md:{first_line}", cmd))
    return cmds


def yaml_commands() -> list[tuple[str, list[str]]]:
    """Commands in YAML string values that mention the package (entrypoints, setup lines); the
    files' own tests parse their Ray commands strictly."""
    cmds = []
    for path in YAML_FILES:
        for n, doc in enumerate(yaml_docs(path)):
            for where, text in strings_in(doc):
                if "mlem-ray" not in text and "mlem_ray" not in text:
                    continue
                for line in logical_lines(text):
                    try:
                        found = simple_commands(line)
                    except ValueError:  # not shell (e.g. prose with an apostrophe)
                        continue
                    cmds.extend((f"{path.name}[{n}]:{where}", cmd) for cmd in found)
    return cmds


def mlem_commands() -> list[tuple[str, list[str]]]:
    found = []
    for source, cmd in readme_commands() + yaml_commands():
        argv = mlem_argv(cmd)
        if argv is not None:
            found.append((source, argv))
    return found


def ray_cli_parse(argv: list[str]) -> None:
    """Resolve `ray SUB [SUB] ARGS` through Ray's click CLI and parse ARGS; raises click errors."""
    from ray.scripts.scripts import cli

    cmd, args, path = cli, list(argv), ["ray"]
    while isinstance(cmd, click.Group):
        assert args, f"`{' '.join(path)}` needs a subcommand"
        name, args = args[0], args[1:]
        sub = cmd.get_command(click.Context(cmd), name)
        assert sub is not None, f"`{' '.join(path)}` has no subcommand {name!r}"
        cmd, path = sub, [*path, name]
    cmd.make_context(" ".join(path), args)


def pip_names(requirements) -> set[str]:
    return {re.split(r"[<>=!~\[;@ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in requirements}


def pyproject_dependency_names() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    if tomllib is not None:
        deps = tomllib.loads(text)["project"]["dependencies"]
    else:  # Python 3.10: the [project] dependencies array, one quoted requirement per entry
        block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, flags=re.M | re.S).group(1)
        deps = re.findall(r"[\"']([^\"']+)[\"']", block)
    return pip_names(deps) - {"ray"}


def torch_pins(texts) -> set[str]:
    return {m for t in texts for m in re.findall(r"torch==([0-9][\w.+]*)", t)}


def makefile_torch_pin() -> set[str]:
    makefile = ROOT / "Makefile"
    return torch_pins([makefile.read_text()]) if makefile.exists() else set()


# ---------------------------------------------------------------------------------------------
# files


def test_the_deployment_files_are_there():
    for path in (RAY_UP, RAYJOB, RUNTIME_ENV, README):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_every_yaml_parses(path):
    docs = yaml_docs(path)
    assert docs, f"{path.name} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path.name}: every document must be a mapping"


# ---------------------------------------------------------------------------------------------
# ray up


def ray_up() -> dict:
    (config,) = yaml_docs(RAY_UP)
    return config


def test_ray_up_required_keys_and_node_types():
    c = ray_up()
    assert isinstance(c["cluster_name"], str) and c["cluster_name"]
    assert isinstance(c["max_workers"], int) and c["max_workers"] >= 1
    types = c["available_node_types"]
    assert c["head_node_type"] in types, "head_node_type must name one of available_node_types"
    gpu_types = {name: t for name, t in types.items()
                 if name != c["head_node_type"] and t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "no worker node type advertises resources: {GPU: n}"
    for name, t in gpu_types.items():
        assert t.get("max_workers", c["max_workers"]) > t.get("min_workers", 0), f"{name} cannot autoscale"


def test_ray_up_passes_rays_own_config_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(ray_up())))


def test_ray_up_installs_torch_then_this_package_from_the_synced_repo():
    c = ray_up()
    # setup_commands run on every node (Ray prepends them to head_/worker_setup_commands).
    commands = c["setup_commands"]
    installs = [n for n, cmd in enumerate(commands) if re.search(r"\bpip install\b", cmd)]
    torch_at = [n for n in installs if "torch==" in commands[n]]
    assert torch_at, "setup_commands must `pip install torch==<version>` (the CUDA build) explicitly"
    synced = [remote for remote, local in c["file_mounts"].items() if os.path.normpath(local) == "."]
    assert synced, "file_mounts must copy the repository ('.') to the nodes"
    package_at = [n for n in installs
                  if any(re.search(rf"pip install\b.*\s(-e\s+)?{re.escape(r)}/?(\s|$)", commands[n]) for r in synced)]
    assert package_at, f"setup_commands must `pip install` the synced repository ({synced})"
    assert min(torch_at) < min(package_at), "torch must be installed before the package"
    pins = torch_pins(commands)
    assert len(pins) == 1
    assert not makefile_torch_pin() or pins == makefile_torch_pin(), "torch pin differs from the Makefile's"
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert not any("ray[" in cmd or re.search(r"pip install\b.*\bray\b", cmd) for cmd in c.get(key, [])), \
            f"{key} must not reinstall Ray over the image's"


def test_ray_up_security_and_shared_storage():
    c = ray_up()
    start_lines = c["head_start_ray_commands"] + c["worker_start_ray_commands"]
    starts = [cmd for line in start_lines for cmd in simple_commands(line) if cmd[:2] == ["ray", "start"]]
    assert len(starts) == 2
    for line in start_lines:
        if "ray start" in line:
            assert "RAY_AUTH_MODE=token" in line, f"token authentication off in: {line}"
    head = next(cmd for cmd in starts if "--head" in cmd)
    assert "--dashboard-host=127.0.0.1" in head or ["--dashboard-host", "127.0.0.1"] in [head[i:i + 2] for i in range(len(head))]
    assert any(remote.endswith(".ray/auth_token") for remote in c["file_mounts"]), "the token must reach every node"
    # Sweeps go to a bucket: every node type has an instance profile (the head Ray's default one,
    # which `ray up` creates when the head's node_config names none); no keys in the file.
    for name, t in c["available_node_types"].items():
        if name != c["head_node_type"]:
            assert t["node_config"].get("IamInstanceProfile"), f"{name}: no IamInstanceProfile for the sweep bucket"
    text = RAY_UP.read_text()
    assert not re.search(r"(?i)aws_secret_access_key|aws_access_key_id|BEGIN .*PRIVATE KEY", text), "keys in the file"
    # The EFS/NFS alternative is kept (commented out).
    assert re.search(r"#.*-v /mnt/shared:/mnt/shared", text) and re.search(r"#.*mount -t nfs4", text)
    excluded = " ".join(c["rsync_exclude"])
    for name in (".venv", "runs", ".git"):
        assert name in excluded, f"rsync_exclude must keep {name} off the nodes"


def test_ray_up_commands_are_accepted_by_ray():
    c = ray_up()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for line in c[key]:
            for cmd in simple_commands(line):
                if cmd[0] == "ray":
                    try:
                        ray_cli_parse(cmd[1:])
                    except click.ClickException as e:
                        pytest.fail(f"{key}: `{shlex.join(cmd)}` rejected by Ray's CLI: {e.format_message()}")


# ---------------------------------------------------------------------------------------------
# KubeRay RayJob


def rayjob() -> dict:
    jobs = [d for d in yaml_docs(RAYJOB) if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, "rayjob.yaml must hold exactly one RayJob"
    return jobs[0]


def test_rayjob_required_structure_with_gpu_workers():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    cluster = spec["rayClusterSpec"]
    head_containers = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head_containers and all(c.get("image") for c in head_containers)
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in groups
                  if any(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu in its limits"
    for g in gpu_groups:
        assert g["maxReplicas"] > g["minReplicas"] >= 0, f"worker group {g['groupName']} cannot autoscale"
    assert cluster.get("enableInTreeAutoscaling") is True
    assert cluster.get("authOptions", {}).get("mode") == "token", "token authentication off"


def test_rayjob_runs_the_default_mlem_sweep_on_gpus_into_a_bucket_with_workload_identity():
    job = rayjob()
    (cmd,) = simple_commands(job["spec"]["entrypoint"])
    argv = mlem_argv(cmd)
    assert argv is not None and argv[0] == "sweep", "the entrypoint must run the sweep"
    # The package runs from the working dir: the module form works without an install.
    assert cmd[1:3] == ["-m", "mlem_ray"] and argv == cmd[3:], "use `python -m mlem_ray` in a working-dir entrypoint"
    from mlem_ray.cli import build_parser
    from mlem_ray.sweep.space import load_space

    args = build_parser().parse_args(argv)
    assert args.gpus_per_worker >= 1
    assert args.space == "mlem" and load_space(args.space).is_two_stage
    out = str(args.out)
    docs = yaml_docs(RAYJOB)
    cluster = job["spec"]["rayClusterSpec"]
    pod_specs = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    if re.match(r"^(s3|gs)://", out):
        accounts = {d["metadata"]["name"]: d["metadata"].get("annotations", {}) for d in docs
                    if d.get("kind") == "ServiceAccount"}
        for pod in pod_specs:
            name = pod.get("serviceAccountName")
            assert name in accounts, "every Ray pod must run as the ServiceAccount that holds the bucket's identity"
            assert any(k in accounts[name] for k in ("eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account")), \
                "the ServiceAccount needs a workload-identity annotation"
        assert not re.search(r"(?i)aws_secret_access_key|aws_access_key_id", RAYJOB.read_text()), "keys in the file"
        return
    # The alternative: a shared ReadWriteMany volume mounted at --out in every Ray pod.
    rwx_claims = {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"
                  and "ReadWriteMany" in d["spec"]["accessModes"]}
    for pod in pod_specs:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                  if "persistentVolumeClaim" in v}
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])
                  if m["name"] in claims and claims[m["name"]] in rwx_claims]
        assert any(out == m["mountPath"] or out.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts), \
            f"--out {out} is not on the shared ReadWriteMany volume in every Ray pod"


def test_rayjob_runtime_env_fetches_the_repo_and_installs_the_dependencies():
    env = yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"])
    assert re.match(r"^[a-z][a-z0-9+.-]*://", env["working_dir"]), "working_dir must be a URI the cluster can fetch"
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)
    names = pip_names(env["pip"])
    assert "ray" not in names, "the pip list must not replace the image's Ray"
    assert pyproject_dependency_names() <= names, f"missing: {sorted(pyproject_dependency_names() - names)}"
    assert not makefile_torch_pin() or torch_pins(env["pip"]) == makefile_torch_pin()


# ---------------------------------------------------------------------------------------------
# runtime_env.yaml for `ray job submit --working-dir .`

WORKING_DIR_COMPATIBLE = {"excludes", "env_vars", "pip", "uv", "py_modules", "config"}


def runtime_env() -> dict:
    (env,) = yaml_docs(RUNTIME_ENV)
    return env


def test_runtime_env_holds_working_dir_compatible_keys_only():
    env = runtime_env()
    assert set(env) <= WORKING_DIR_COMPATIBLE, f"unexpected keys: {sorted(set(env) - WORKING_DIR_COMPATIBLE)}"
    wd = env.get("working_dir")
    assert wd is None or not (os.path.isabs(wd) or wd.startswith("~")), "working_dir must not name a local path"
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values()), "env_vars values must be strings"


def test_runtime_env_is_accepted_by_ray_job_submit():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    # Exactly what `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml` builds.
    env = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV), working_dir=str(ROOT))
    assert env["working_dir"] == str(ROOT)
    RuntimeEnv(**env)


def test_runtime_env_excludes_keep_the_venv_and_runs_out_of_the_upload():
    from ray._private.runtime_env.packaging import _get_excludes

    match = _get_excludes(ROOT, runtime_env()["excludes"])

    def excluded(rel: str) -> bool:  # Ray skips a directory's whole subtree once it matches
        parts = Path(rel).parts
        return any(match(ROOT.joinpath(*parts[:n])) for n in range(1, len(parts) + 1))

    for rel in (".venv/bin/python", "runs/sweep/sweep.json", ".git/HEAD", "mlem_ray/__pycache__/cli.cpython-311.pyc"):
        assert excluded(rel), f"{rel} would be uploaded"
    for rel in ("mlem_ray/cli.py", "mlem_ray/__main__.py", "search_spaces/mlem.yaml", "pyproject.toml"):
        assert not excluded(rel), f"{rel} would be left out of the working dir"


def test_runtime_env_commented_dependency_list_matches_pyproject():
    """The `pip:` block to uncomment for bare clusters stays in step with pyproject.toml."""
    lines = RUNTIME_ENV.read_text().splitlines()
    start = next((n for n, line in enumerate(lines) if re.fullmatch(r"#\s*pip:\s*", line)), None)
    if start is None:  # the list is live instead
        block = runtime_env().get("pip")
        assert block, "runtime_env.yaml has neither a pip list nor a commented one"
    else:
        body = []
        for line in lines[start + 1:]:
            m = re.fullmatch(r"#(\s+- .*)", line)
            if not m:
                break
            body.append(m.group(1))
        block = yaml.safe_load("\n".join(body))
    names = pip_names(block)
    assert "ray" not in names
    assert pyproject_dependency_names() <= names, f"missing: {sorted(pyproject_dependency_names() - names)}"
    assert pip_names(block) == pip_names(yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"])["pip"])


# ---------------------------------------------------------------------------------------------
# commands: every `mlem-ray ...` / `python -m mlem_ray ...` names a real CLI command

MLEM_COMMANDS = mlem_commands()


def test_commands_were_found():
    sources = {s.split(":")[0] for s, _ in MLEM_COMMANDS}
    assert "README.md" in sources and any(s.startswith("rayjob.yaml") for s in sources)
    assert any(argv[:1] == ["sweep"] for _, argv in MLEM_COMMANDS)


@pytest.mark.parametrize("source,argv", MLEM_COMMANDS,
                         ids=[f"{s} mlem-ray {' '.join(a[:1])}" for s, a in MLEM_COMMANDS])
def test_command_is_accepted_by_the_cli(source, argv):
    from mlem_ray.cli import build_parser

    err = io.StringIO()
    args = None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit:
        pass
    if args is None:
        why = err.getvalue().strip().splitlines()
        pytest.fail(f"{source}: `mlem-ray {shlex.join(argv)}` is rejected by mlem_ray.cli: "
                    f"{why[-1] if why else 'exit'}")
    assert args.command == argv[0]


# ---------------------------------------------------------------------------------------------
# README: the recipes are there, and Ray / the files accept them

README_RAY_COMMANDS = [(s, c) for s, c in readme_commands() if c[0] == "ray"]


@pytest.mark.parametrize("source,cmd", README_RAY_COMMANDS,
                         ids=[f"{s} {' '.join(c[:3])}" for s, c in README_RAY_COMMANDS])
def test_readme_ray_command_is_accepted_by_ray(source, cmd, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        ray_cli_parse(cmd[1:])
    except click.ClickException as e:
        pytest.fail(f"{source}: `{shlex.join(cmd)}` rejected by Ray's CLI: {e.format_message()}")


def has_option(cmd: list[str], flag: str, value: str | None = None) -> bool:
    for n, tok in enumerate(cmd):
        if tok == flag and (value is None or cmd[n + 1:n + 2] == [value]):
            return True
        if value is not None and tok == f"{flag}={value}":
            return True
    return False


def test_readme_has_the_recipes():
    cmds = [c for _, c in readme_commands()]
    ray = [c for c in cmds if c[0] == "ray"]

    def some(pred, what):
        assert any(pred(c) for c in cmds), f"cluster/README.md lacks {what}"

    # (1) one machine
    some(lambda c: c[:2] == ["ray", "start"] and has_option(c, "--head") and has_option(c, "--dashboard-host", "127.0.0.1")
         and has_option(c, "--num-cpus"), "`ray start --head --dashboard-host 127.0.0.1 --num-cpus N`")
    some(lambda c: (mlem_argv(c) or [None])[0] == "sweep" and has_option(mlem_argv(c), "--address", "auto")
         and has_option(mlem_argv(c), "--out"), "`mlem-ray sweep --address auto --out DIR`")
    some(lambda c: c == ["ray", "stop"], "`ray stop`")
    # (2) job submission
    some(lambda c: c[:3] == ["ray", "job", "submit"] and has_option(c, "--address", "http://127.0.0.1:8265")
         and has_option(c, "--working-dir", ".") and has_option(c, "--runtime-env", "cluster/runtime_env.yaml")
         and "--" in c and c[c.index("--") + 1:c.index("--") + 4] == ["python", "-m", "mlem_ray"],
         "`ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m mlem_ray ...`")
    some(lambda c: c[:3] == ["ray", "job", "logs"], "`ray job logs`")
    some(lambda c: c[:3] == ["ray", "job", "status"], "`ray job status`")
    # (3) cloud and Kubernetes
    for sub in ("up", "dashboard", "down"):
        some(lambda c, sub=sub: c[:2] == ["ray", sub] and "cluster/gpu-cluster.yaml" in c, f"`ray {sub} cluster/gpu-cluster.yaml`")
    some(lambda c: c[:3] == ["kubectl", "apply", "-f"] and "cluster/rayjob.yaml" in c, "`kubectl apply -f cluster/rayjob.yaml`")
    some(lambda c: c[:2] == ["kubectl", "get"] and "rayjob" in c, "a way to watch the RayJob")
    # token authentication set up before `ray start`
    some(lambda c: c[:2] == ["ray", "get-auth-token"] and "--generate" in c, "`ray get-auth-token --generate`")
    assert ray, "no ray commands"
    text = README.read_text()
    for needle in ("RAY_AUTH_MODE", "~/.ray/auth_token", "weights_only=True", "/mnt/shared", "s3://"):
        assert needle in text, f"cluster/README.md does not mention {needle}"


def test_paths_named_in_commands_exist():
    for source, cmd in readme_commands() + yaml_commands():
        for tok in cmd:
            if re.fullmatch(r"(cluster|search_spaces)/[\w./-]+", tok):
                assert (ROOT / tok).exists(), f"{source}: {tok} does not exist"
