"""The leaderboard as `mlem-ray report` reads it: refused with one line when it is missing,
empty or foreign, and with the optional columns of older or newer drivers filled in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
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
    defaults = {"stage": board["method"], "primary_metric": "primary", "primary_mode": "min", "status": "ok",
                "selection_metric": "", "selection_mode": "", "selection_value": np.nan, "val_loss": np.nan,
                "error": "",
                "reseed_of": "", "params": "{}", "seed": 0, "scored_at": np.arange(len(board), dtype=float)}
    for column, value in defaults.items():
        if column not in board.columns:
            board[column] = value
    board["reseed_of"] = board["reseed_of"].fillna("").astype(str)
    board["status"] = board["status"].fillna("ok").astype(str)
    board["error"] = board["error"].fillna("").astype(str)
    board["trial_id"] = board["trial_id"].astype(str)
    board["primary_value"] = pd.to_numeric(board["primary_value"], errors="coerce")
    return board.reset_index(drop=True)
