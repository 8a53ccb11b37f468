"""TensorBoard HParams: one session per scored trial, in `<trial dir>/hparams`.

A session holds the trial's swept values (plus `stage` and `method`) and, as scalars in the same
run, its in-trial metrics (`trial/<selection metric>`, `trial/val_loss`) and its downstream scores
(`downstream/<metric>`). No experiment summary is written anywhere: without one, TensorBoard
builds the HParams table from the sessions themselves, so its columns are the union of every
stage's swept keys, and a stage or metric added later (comparison stages, `--reseed`, a
`--resume`) appears without rewriting anything. Tune's own per-trial HParams are switched off
(sweep/tensorboard.py); they would add a second row per trial, without the downstream scores.

Written with TensorBoard's own protos and event writer (no TensorFlow needed).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

RUN = "hparams"  # the session's run, inside the trial directory (beside Tune's curves)


def session_hparams(params: dict, stage: str, method: str) -> dict:
    """HParams values must be bool, number or string."""
    values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in params.items()}
    return {**values, "stage": stage, "method": method}


def session_metrics(row: dict) -> dict:
    """The metric columns of a leaderboard row: in-trial (the selection score and val_loss) and
    every numeric downstream score."""
    skip = {"scored_at", "seed", "selection_value", "val_loss", "n_labelled", "n_train", "n_test"}
    metrics = {f"downstream/{k}": v for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}
    metrics[f"trial/{row['selection_metric']}"] = row["selection_value"]
    metrics["trial/val_loss"] = row["val_loss"]
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def write_session(run_dir, hparams: dict, metrics: dict, group: str, start_time: float | None = None) -> Path:
    """One HParams session in `run_dir`. Sessions with the same `group` (a trial and its re-runs
    with other seeds) form one session group, whose metrics TensorBoard aggregates."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    run_dir = Path(run_dir)
    now = time.time()
    writer = EventFileWriter(str(run_dir))
    try:
        writer.add_event(event_pb2.Event(wall_time=now, step=0,
                                         summary=hp.hparams_pb(hparams, trial_id=group, start_time_secs=start_time or now)))
        values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in sorted(metrics.items())]
        writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=summary_pb2.Summary(value=values)))
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=now)
        content = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
        writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])))
    finally:
        writer.close()
    return run_dir
