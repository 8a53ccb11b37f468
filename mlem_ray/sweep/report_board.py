"""The leaderboard as `mlem-ray report` reads it: refused with one line when it is missing,
empty or foreign, and with the optional columns of older or newer drivers filled in (the
defaults are the leaderboard row type's: evaluation/leaderboard.py, Row)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import storage
from ..errors import ReportError
from ..evaluation import leaderboard

LEADERBOARD = leaderboard.FILE
_REQUIRED = ("trial_id", "method", "primary_value")


def load_leaderboard(sweep_dir: Path) -> pd.DataFrame:
    """The leaderboard with missing optional columns filled in, so a board from an older or newer
    driver (or one with extra columns) still reports; refused with one line when there is none."""
    path = leaderboard.path(sweep_dir)
    try:
        found = storage.is_dir(sweep_dir)
    except (OSError, storage.StorageError) as e:
        raise ReportError(f"{sweep_dir}: cannot read it ({str(e).splitlines()[0][:200]})") from None
    if not found:
        raise ReportError(f"{sweep_dir}: no such directory: give the --out directory of a sweep "
                          "(mlem-ray sweep --out DIR)")
    if not storage.exists(path):
        raise ReportError(f"{sweep_dir}: no {LEADERBOARD}: is this a sweep directory (mlem-ray sweep --out DIR)? "
                          "Has any trial finished?")
    try:
        board = leaderboard.read(sweep_dir)
    except Exception as e:  # noqa: BLE001 (pyarrow raises several kinds for a damaged file)
        raise ReportError(f"{path}: cannot read the leaderboard ({type(e).__name__}: {e}); "
                          "is a sweep still writing it? Try again") from None
    if board.empty:
        raise ReportError(f"{path}: the leaderboard is empty: no trial has been scored yet; "
                          "wait for the first trial to finish")
    missing = [c for c in _REQUIRED if c not in board.columns]
    if missing:
        raise ReportError(f"{path}: not a leaderboard (no column {missing[0]!r}); "
                          "it should be written by mlem-ray sweep")
    # Every column present, each missing value the row type's default (evaluation/leaderboard.py: Row).
    return leaderboard.frame(leaderboard.rows_of(board))
