"""Where a sweep's files live: a local path or an object-store URI (s3://, gs://, anything
`pyarrow.fs.FileSystem.from_uri` resolves), through one layer.

On a cloud Ray cluster there is no shared disk: Tune's trial directories, the leaderboard,
teacher.json, sweep.json, reports and checkpoints all live in a bucket, and every node reaches
them the same way. Everything a sweep writes or reads goes through this module; a plain path
goes through pyarrow's LocalFileSystem, so one code path serves both.

The API (kept small, so other layers can adopt it piecemeal):
- `resolve(location) -> (fs, path)`; `is_uri`, `join`, `uri_of(fs, path)` (back to a location);
- `read_bytes/read_text`, `write_bytes/write_text` (atomic: local temp + rename; on object storage
  one PUT is atomic by itself, there is no rename), `exists`, `is_dir`, `listdir`, `delete`;
- `upload(local_dir, location)`, `download(location, local_dir)`;
- `local_copy(location)`: a read-only local copy of a directory (a prepared data set, a
  checkpoint) for code that memory-maps or `torch.load`s it, cached per node;
- `ray_storage(location)`: Tune/Train RunConfig arguments (storage_path, storage_filesystem);
- `check_access(location)`: write, read back and delete a probe object; a `StorageError` with one
  line (wrong bucket, no credentials, unreachable endpoint) otherwise;
- `worker_env()`: the environment Ray workers need to reach the same object store;
- `driver_dir(location)`: a local directory for driver-only files (lock, Optuna journal, trackers).

Callers never ask "is this a URI?" to decide what to do; they say what they need and this module
decides for local paths and object storage alike:
- `absolute(location)`: a URI as given, a path made absolute (what sweep.json records);
- `is_location(text)`: a location (URI, existing file, or a path with a separator), not a bare name;
- `local_path(location)`: its local path, or None when it has none here (object storage);
- `ensure_dir(location)`: a local directory is created (-> whether it was); object storage has none;
- `check_writable(location)`: `check_access` where a store can refuse (object storage);
- `writable_dir(location)`: a local directory whose files end up at `location` (uploaded on exit);
- `staging(location, fetch)`: the same for a run that may resume: one local directory per URI;
- `worker_env_for(*locations)`: `worker_env()` when any location is on object storage, else None.

Credentials and endpoints come from the environment as each cloud's SDK expects (instance
profile / workload identity; `AWS_ENDPOINT_URL` for an S3-compatible server), never from files of
this project.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

# pyarrow >= 20's AWS SDK sends trailing checksums (aws-chunked uploads) by default. S3-compatible
# servers that do not understand them (SeaweedFS, older MinIO, Ceph) store the chunk framing
# verbatim, so an object silently reads back longer than it was written. "when_required" is
# valid on AWS too (it was the SDK default until 2025); a user's own setting wins.
_S3_DEFAULTS = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}
for _k, _v in _S3_DEFAULTS.items():
    os.environ.setdefault(_k, _v)

# Forwarded to Ray workers, so a trial on another node reaches the same store the driver does.
_FORWARDED = tuple(_S3_DEFAULTS) + (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
    "AWS_EC2_METADATA_DISABLED", "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST",
)

CACHE_ENV = "MLEM_RAY_CACHE"


class StorageError(UserError):
    """A location that cannot be used (bad URI, missing bucket, no access): one line, exit code 2."""


def is_uri(location) -> bool:
    """True for scheme://... locations other than file://."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


def resolve(location):
    """-> (pyarrow FileSystem, path inside it). A plain path is made absolute on the local disk."""
    import pyarrow.fs as pafs

    text = str(location)
    if not is_uri(text):
        return pafs.LocalFileSystem(), str(Path(text.removeprefix("file://")).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise StorageError(f"{text}: not a usable storage URI ({_first_line(e)})") from None
    return fs, path.rstrip("/")


def uri_of(fs, path: str) -> str:
    """The location string of `path` inside `fs` (as `resolve` would take it back)."""
    kind = fs.type_name
    if kind == "local":
        return path
    scheme = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs", "abfs": "abfs"}.get(kind, kind)
    return f"{scheme}://{path.lstrip('/')}"


def join(location, *parts: str) -> str:
    """`location` / parts, for a path or a URI alike."""
    text = str(location)
    if not is_uri(text):
        return str(Path(text).joinpath(*parts))
    return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])


def name(location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""


def exists(location) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def listdir(location) -> list[str]:
    """Names directly under a directory ([] when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def read_bytes(location) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location, data: bytes) -> None:
    """Readers never see half a file: locally a temp sibling renamed into place; on object storage
    a single PUT, which is atomic by itself (object stores have no rename)."""
    fs, path = resolve(location)
    if fs.type_name == "local":
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        from .outputs import temp_name

        # A failed write (a full disk) removes its temporary: nothing partial is left beside target.
        fd, tmp = tempfile.mkstemp(prefix=temp_name(target.name), dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def delete(location) -> None:
    """Remove a file or a directory tree; nothing when it is not there."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def makedirs(location) -> None:
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def upload(local_dir, location) -> None:
    """Copy a local directory tree to `location` (files that exist there are replaced)."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    pafs.copy_files(str(Path(local_dir).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def download(location, local_dir) -> Path:
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local.resolve()), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def copy_dir(src, dst) -> None:
    """Replace the directory `dst` with a copy of `src` (either may be a URI)."""
    import pyarrow.fs as pafs

    src_fs, src_path = resolve(src)
    dst_fs, dst_path = resolve(dst)
    delete(dst)
    dst_fs.create_dir(dst_path, recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlem_ray")


def driver_dir(location) -> Path:
    """A local directory for the driver's own files of the sweep at `location` (the sweep lock,
    the Optuna journal, the trackers' stores): `location` itself when it is a path; for a URI a
    directory under the cache keyed by the URI. Those files need local file semantics (O_EXCL,
    file locks, SQLite) that an object store lacks, and only the driver touches them, so on object
    storage they stay on the driver's host: a resumed sweep must be driven from the same host (or
    with the same MLEM_RAY_CACHE) to find them."""
    if not is_uri(location):
        return Path(str(location))
    text = str(location).rstrip("/")
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-60:]
    return cache_root() / "sweeps" / f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _listing(location) -> list:
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((i.path[len(path):].lstrip("/"), i.size, i.mtime_ns or 0) for i in infos
                  if i.type == pafs.FileType.File)


def local_copy(location, by_content: bool = False) -> Path:
    """A local copy of the directory at `location`, downloaded once per node and reused (a plain
    path is returned as it is). The cache key:
    - by_content (a prepared data set): schema.json's bytes and every file's name and size, so
      the same data set under two URIs is one copy and a rewritten one is a new copy;
    - otherwise (a checkpoint): the location and every file's name, size and modification time.
    Concurrent callers on one node (trials) each download to a temp dir; the first rename wins."""
    if not is_uri(location):
        return Path(str(location))
    files = _listing(location)
    if not files:
        raise StorageError(f"{location}: nothing there (no such directory, or no access)")
    h = hashlib.sha256()
    if by_content:
        h.update(read_bytes(join(location, "schema.json")) if any(f[0] == "schema.json" for f in files) else b"")
        h.update(repr([(f[0], f[1]) for f in files]).encode())
    else:
        h.update(str(location).encode())
        h.update(repr(files).encode())
    target = cache_root() / ("data" if by_content else "checkpoints") / h.hexdigest()[:24]
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from .outputs import remove_stale, temp_name

    remove_stale(target)  # a killed download's leftovers
    tmp = Path(tempfile.mkdtemp(prefix=temp_name(target.name), dir=target.parent))
    try:
        download(location, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process on this node finished first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_access(location, token: str = "") -> None:
    """Write a probe object under `location`, read it back byte-exact and delete it. Raises
    StorageError with one line naming the cause (missing bucket, no credentials, unreachable
    endpoint, a store that alters what it stores)."""
    probe = join(location, f".storage_probe-{os.getpid()}-{token}")
    payload = f"mlem_ray storage probe {token}".encode()
    try:
        write_bytes(probe, payload)
        back = read_bytes(probe)
        delete(probe)
    except StorageError:
        raise
    except Exception as e:  # pyarrow raises OSError (and ArrowException) with the SDK's message
        raise StorageError(f"cannot write to {location}: {explain(e)}") from None
    if back != payload:
        raise StorageError(f"{location} returned {len(back)} bytes for a {len(payload)}-byte probe object; an "
                           "S3-compatible server may need AWS_REQUEST_CHECKSUM_CALCULATION=when_required")


def explain(e: BaseException) -> str:
    """One line saying what a storage failure means (missing bucket, credentials, endpoint)."""
    text = str(e)
    hints = (("NO_SUCH_BUCKET", "the bucket does not exist"),
             ("NoSuchBucket", "the bucket does not exist"),
             ("ACCESS_DENIED", "access denied (check the credentials: instance profile, workload identity or "
                               "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment)"),
             ("AccessDenied", "access denied (check the credentials)"),
             ("INVALID_ACCESS_KEY_ID", "unknown access key (check the credentials)"),
             ("SIGNATURE_DOES_NOT_MATCH", "wrong secret key (check the credentials)"),
             ("NETWORK_CONNECTION", "cannot connect to the storage endpoint (check AWS_ENDPOINT_URL / the network)"),
             ("Could not connect", "cannot connect to the storage endpoint"),
             ("credentials", "no credentials found"))
    for needle, meaning in hints:
        if needle in text:
            return meaning
    return _first_line(e)


def absolute(location) -> str:
    """A location as recorded for other processes: a URI as given, a path made absolute."""
    text = str(location)
    return text if is_uri(text) else str(Path(text).resolve())


def is_location(text) -> bool:
    """True when `text` names a location (a URI, an existing local file, or a path with a
    separator) rather than a bare name (such as a shipped search space's)."""
    text = str(text)
    return is_uri(text) or Path(text).is_file() or "/" in text or os.sep in text


def local_path(location) -> Path | None:
    """The location's local path (absolute), or None when it lives on object storage."""
    return None if is_uri(location) else Path(str(location)).resolve()


def ensure_dir(location) -> bool:
    """Make the directory at a local path (parents too); nothing on object storage, which has no
    directories. -> True when a local directory was created here."""
    path = local_path(location)
    if path is None or path.exists():
        return False
    path.mkdir(parents=True, exist_ok=True)
    return True


def check_writable(location, token: str = "") -> None:
    """`check_access` on object storage, where a bucket, credentials or an endpoint can refuse;
    nothing for a local path (its directory is created when the first file is written)."""
    if is_uri(location):
        check_access(location, token=token)


def worker_env_for(*locations) -> dict | None:
    """`worker_env()` when any of `locations` is on object storage (Ray workers must reach the same
    store), else None (nothing to forward)."""
    return worker_env() if any(is_uri(loc) for loc in locations if loc) else None


def _upload_last(local_dir, location, last: str | None) -> None:
    """upload(), with the file `last` written after every other one (a marker of completeness)."""
    marker = Path(local_dir) / last if last else None
    if marker is None or not marker.exists():
        upload(local_dir, location)
        return
    data = marker.read_bytes()
    marker.unlink()
    upload(local_dir, location)
    write_bytes(join(location, last), data)


@contextlib.contextmanager
def writable_dir(location, last: str | None = None, prefix: str = "mlem_ray_"):
    """A local directory to write files that belong at `location`: the location itself when it is
    a path; on object storage a temporary directory uploaded there when the block ends without an
    error (`last`: a file uploaded after all others, e.g. the schema.json that marks a complete
    data set). Files already at `location` are replaced, others kept."""
    path = local_path(location)
    if path is not None:  # created by the writer when it writes (a refused write leaves nothing)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as local:
        yield Path(local)
        _upload_last(local, location, last)


@contextlib.contextmanager
def staging(location, fetch: tuple[str, ...] = ()):
    """A local directory for a run whose outputs belong at `location`: the location itself when it
    is a path; on object storage one local directory per URI (emptied first, the subdirectories
    `fetch` downloaded into it), uploaded to the URI and removed when the block ends without an
    error. An interrupted run leaves its staging directory for the next attempt to replace."""
    path = local_path(location)
    if path is not None:
        yield path
        return
    local = cache_root() / "pretrain" / hashlib.sha256(str(location).encode()).hexdigest()[:24]
    shutil.rmtree(local, ignore_errors=True)
    for sub in fetch:
        download(join(location, sub), local / sub)
    local.mkdir(parents=True, exist_ok=True)
    yield local
    upload(local, location)
    shutil.rmtree(local, ignore_errors=True)


def ray_storage(location) -> dict:
    """RunConfig / Tuner.restore keyword arguments that put a Tune or Train run at `location`:
    a local path as it is, a URI as a path inside its file system (storage_filesystem)."""
    if not is_uri(location):
        return {"storage_path": str(Path(str(location)).resolve())}
    fs, path = resolve(location)
    return {"storage_path": path, "storage_filesystem": fs}


def worker_env() -> dict:
    """Environment variables that Ray workers need to reach the same object store as this
    process (endpoint, region, checksum settings). Never secrets: each node has its own credential
    chain (instance profile, workload identity), and a runtime env is visible in the dashboard."""
    return {k: os.environ[k] for k in _FORWARDED if k in os.environ}
