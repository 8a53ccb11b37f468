"""Give back the resident pages of a memory-mapped data set that a pass has finished reading.

A prepared data set is memory-mapped (data/prepared.py): every page a pass touches stays in the
process's resident set until the mapping goes, so one pass over a million sequences would hold
the whole file (2-3 GB at 100 events a sequence) resident although each page was needed once.
`release(directory)` tells the kernel (madvise MADV_DONTNEED) that this process no longer needs
the pages of its read-only mappings of files under `directory`; the data stay in the page cache,
and a page read again is mapped again from there (a minor fault), so values never change. Linux
only; elsewhere, or when anything fails, it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import numpy as np

_MADV_DONTNEED = 4
# Consecutive sequences a pass reads between two releases. The kernel maps pages around each one
# touched (fault-around, 64 KiB), so a sparse sample of rows spread over the whole file would make
# nearly all of it resident before the next release; bounding the stretch of the file a chunk
# spans bounds that: 65,536 sequences of ~100 events are about 160 MB of a prepared data set.
SPAN_SEQUENCES = 65_536
_libc = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc.madvise


def release(directory) -> int:
    """Drop this process's resident pages of read-only file mappings under `directory` -> the
    bytes of mappings advised (0 where nothing was done)."""
    if not sys.platform.startswith("linux"):
        return 0
    root = os.path.realpath(str(directory)) + os.sep
    done = 0
    try:
        madvise = _madvise()
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or not fields[5].strip().startswith(root) or "w" in fields[1]:
                    continue
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
                    done += hi - lo
    except (OSError, AttributeError):
        return done
    return done


def chunks(rows: np.ndarray, max_rows: int, span: int = SPAN_SEQUENCES) -> list[slice]:
    """Slices of the sorted `rows` that each hold at most `max_rows` rows and stay within one
    stretch of `span` consecutive sequence numbers: a pass that releases the pages after each
    chunk holds at most that stretch of the file resident."""
    rows = np.asarray(rows)
    if len(rows) == 0:
        return []
    bounds = np.flatnonzero(np.diff(rows // max(1, span))) + 1  # where a row enters the next stretch
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(rows)]])
    step = max(1, max_rows)
    return [slice(i, min(i + step, e)) for s, e in zip(starts, ends) for i in range(s, e, step)]
