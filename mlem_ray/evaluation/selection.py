"""The in-trial selection score now lives below the loop, in training/selection.py (the loop builds
it once per run); its vocabulary is the config's. Re-exported here for code written against this path."""
from ..config import REPORTED, SELECTION_METRICS as METRICS  # noqa: F401
from ..training.selection import (DEFAULT_SIZE, MIN_LABELLED, SelectionScorer, default_metric,  # noqa: F401
                                  linear_probe_cv, rankme, subset_rows)
