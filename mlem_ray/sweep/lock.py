"""One driver per sweep directory: `--out` holds a lock file naming the driver (host, pid) while a
sweep or a re-seed runs. A second driver into the same `--out` is refused with one line; the lock
of a driver that is gone (its pid is not alive on this host) is taken over, so a killed driver
never blocks `--resume`.

A lock written on another host cannot be checked from here; it is taken over too, since a sweep
directory is normally driven from one head node and a lock from another host is left by a
driver that ran there before (e.g. a job that was rescheduled).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from ..errors import SweepError

FILE = ".sweep.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None  # vanished or half-written: treat as free


def _live(holder: dict | None) -> bool:
    return bool(holder) and holder.get("host") == socket.gethostname() and _alive(int(holder.get("pid", -1)))


@contextlib.contextmanager
def sweep_lock(out):
    """Hold `out`'s lock for the block. A directory this call had to create is removed again if
    the block leaves nothing else in it (a refused start leaves no trace)."""
    from .. import storage

    # A sweep on object storage (no O_EXCL there) is locked in its local driver_dir: this guards
    # against a second driver on the same host (or sharing MLEM_RAY_CACHE) only.
    out = storage.driver_dir(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / FILE
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if _live(holder):
                since = time.strftime("%H:%M:%S", time.localtime(holder.get("since", 0)))
                raise SweepError(f"--out {out} is in use by another sweep (pid {holder['pid']} on "
                                 f"{holder['host']}, since {since}); wait for it to end or choose another --out") from None
            # Stale: move it aside under a name of our own (only one taker wins the rename), retry.
            with contextlib.suppress(FileNotFoundError):
                os.replace(lock, out / f"{FILE}.stale-{os.getpid()}")
                (out / f"{FILE}.stale-{os.getpid()}").unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise SweepError(f"--out {out}: could not take the sweep lock {lock}; another driver keeps taking it")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _holder(lock) == me:
                lock.unlink()
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()
