"""Where a command writes: checked before any work starts, written through temporaries that a
failure removes, and cleaned of the temporaries a killed run left behind.

- `check_output(out, inputs=..., kind=...)`: refuse an ``--out`` that cannot be written (under a
  regular file, on a read-only file system, in a directory this user may not write) or that is
  one of the command's inputs, holds one, or lies inside one (``pretrain --data D --out D
  --overwrite`` would otherwise delete the data set before reading it). Then remove stale
  temporaries of ``out`` (`remove_stale`). Object-store URIs are left to `storage.check_access`.
- `temp_name(name)`: ``.NAME.tmp-PID.HOST-`` (a prefix for `tempfile.mkdtemp`): the pid and host
  say who made a temporary, so a later run can tell a killed run's leftovers from a live writer's.
- `remove_stale(target)`: removes ``.NAME.tmp-*``, ``.NAME.old-*`` and ``.NAME.new-*`` siblings of
  ``target`` made on this host by a process that is gone (or whose pid now belongs to a process
  started after the temporary was made). A live writer's temporaries and other hosts' (a shared
  disk) are kept.
- `write_failed(e)`: the one line for an OSError that a full, read-only or forbidden destination
  raises midway (ENOSPC, EDQUOT, EROFS, EACCES, EFBIG), or None for any other OSError (a bug).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
from pathlib import Path

from .errors import UserError

# An OSError with one of these is the destination's fault, not the program's.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG}


class OutputError(UserError):
    """An output location that cannot be used, or a write into it that failed midway."""


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(name: str, kind: str = "tmp") -> str:
    """The prefix of a temporary sibling of ``name``: ``.NAME.KIND-PID.HOST-``."""
    return f".{name}.{kind}-{os.getpid()}.{_host_tag()}-"


_STALE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old|new)-(?P<pid>\d+)(?:\.(?P<host>[0-9a-f]{8}))?(?:-.*)?$")


def _pid_alive_since(pid: int) -> float | None:
    """When the process `pid` started (seconds since the epoch), 0.0 when it runs but its start is
    unknown (no /proc), None when there is no such process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, owned by someone else
    try:
        # /proc/PID/stat field 22: start time in clock ticks after boot (the name, field 2, may hold spaces)
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def remove_stale(target) -> list[Path]:
    """Remove the temporaries of ``target`` (its ``.NAME.tmp-PID...`` siblings) whose maker is gone.
    -> what was removed."""
    target = Path(target)
    parent = target.parent
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        m = _STALE.match(entry.name)
        if not m or m["name"] != target.name or (m["host"] and m["host"] != host):
            continue
        pid = int(m["pid"])
        if pid == os.getpid():
            continue
        started = _pid_alive_since(pid)
        try:
            made = entry.lstat().st_mtime
        except OSError:
            continue
        # A pid alive again but started after the temporary was last written is another process
        # (1 s of slack: btime has whole seconds).
        if started is not None and (started == 0.0 or started <= made + 1.0):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # not ours to remove after all (permissions); harmless to leave
    return removed


def _within(a: Path, b: Path) -> bool:
    """a is b or lies inside b."""
    return a == b or b in a.parents


def check_output(out, inputs=(), kind: str = "directory", flag: str = "--out", replaces: bool = True) -> Path | None:
    """Refuse an output location before any work starts (see the module docstring).

    `out`: a path (None or a URI: nothing to check here); `inputs`: the paths the command reads
    (data sets, checkpoints, tables; None entries and URIs skipped), none of which the output may
    be or lie inside, nor (with `replaces`: the command may delete `out`, as --overwrite does)
    contain; `kind`: "directory" or "file", what `out` will be.
    -> the resolved local path, or None for a URI."""
    from . import storage

    if out is None or storage.is_uri(out):
        return None
    raw = Path(str(out).removeprefix("file://")).expanduser()
    path = Path(os.path.abspath(raw))
    # The nearest existing ancestor must be a directory we can write into.
    probe = path
    while not os.path.lexists(probe):
        probe = probe.parent
    if probe != path:
        if not probe.is_dir():
            raise OutputError(f"{flag} {out}: {probe} is a file, not a directory, so nothing can be written under it")
    elif kind == "directory" and not path.is_dir():
        raise OutputError(f"{flag} {out} is a file, not a directory; pick a directory")
    elif kind == "file" and path.is_dir():
        raise OutputError(f"{flag} {out} is a directory; pick a file name")
    writable_dir = probe if probe != path else (path if kind == "directory" else path.parent)
    if not os.access(writable_dir, os.W_OK | os.X_OK):
        try:
            read_only = os.statvfs(writable_dir).f_flag & os.ST_RDONLY
        except OSError:
            read_only = False
        why = "is on a read-only file system" if read_only else "is not writable by this user"
        raise OutputError(f"{flag} {out}: {writable_dir} {why}")
    resolved = path.resolve()
    for given in inputs:
        if given is None or storage.is_uri(given):
            continue
        inp = Path(str(given).removeprefix("file://")).expanduser().resolve()
        if _within(resolved, inp):
            what = "is" if resolved == inp else "lies inside"
            raise OutputError(f"{flag} {out} {what} the input {given}: writing there would replace or mix into "
                              f"what this command reads; pick another {flag}")
        if replaces and _within(inp, resolved):
            raise OutputError(f"{flag} {out} holds the input {given}: replacing it would delete what this "
                              f"command reads; pick another {flag}")
    remove_stale(path)
    return path


def write_failed(e: BaseException) -> str | None:
    """The one line for a write that the destination refused midway, else None."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        where = f" {e.filename}" if e.filename else ""
        return f"cannot write{where}: {os.strerror(e.errno)}; free space or pick another --out"
    return None
