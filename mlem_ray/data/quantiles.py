"""Exact quantiles of values spread over buckets, in memory that does not grow with their number.

A numeric field's normaliser (ingest.robust_stats) needs the 25th, 50th and 75th percentiles of
its training values: np.percentile's linear interpolation between two order statistics each. The
streaming ingest holds one bucket at a time, so it finds those order statistics by radix
selection over the float64 values' order-preserving 64-bit keys:

- each bucket sends a histogram of its keys' top ``FIRST_BITS`` bits (pass 3a, no extra read);
- the merged histogram says which bin holds each wanted rank; a bin holding at most
  ``values_cap`` values across the buckets is fetched whole (one more read of the buckets'
  numeric columns) and the rank picked from it; a heavier bin (many values sharing their leading
  bits, e.g. a value repeated millions of times) is refined by a histogram of its next
  ``DIGIT_BITS`` bits instead, and so on down to a single key.

The driver holds the merged histograms (2^FIRST_BITS counts per field) and at most ``values_cap``
values per wanted bin, whatever the table's size, and the result is exactly np.percentile's on
all the values, so the streaming and in-memory paths give the same statistics. The standard
deviation (the fallback where the IQR is 0) is merged from per-bucket moments (Chan et al.), equal
to numpy's up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FIRST_BITS = 20  # histogram sent with each bucket's summary: 2^20 int32 counts per field (4 MiB)
DIGIT_BITS = 16  # bits resolved per refinement round of a heavy bin
VALUES_CAP = 1 << 20  # values of one bin fetched at most, over all buckets
QUARTILES = (1, 2, 3)  # q = k / 4
SIGN = np.uint64(1 << 63)


def order_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys with the order of the (NaN-free) float64 values; -0.0 and 0.0 share a key."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0
    return np.where(bits & SIGN, ~bits, bits | SIGN)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The inverse of order_keys."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.where(keys & SIGN, keys ^ SIGN, ~keys).view(np.float64)


def first_histogram(keys: np.ndarray) -> np.ndarray:
    return np.bincount((keys >> np.uint64(64 - FIRST_BITS)).astype(np.int64),
                       minlength=1 << FIRST_BITS).astype(np.int32)


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of values divided by `top` (so that squares stay
    in float64's range; top: the largest |value|, 1 when all are 0)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    top: float = 1.0

    @staticmethod
    def of(values: np.ndarray) -> Moments:
        if values.size == 0:
            return Moments()
        top = float(np.max(np.abs(values))) or 1.0
        v = values / top
        mean = float(np.mean(v))
        return Moments(int(values.size), mean, float(np.sum((v - mean) ** 2)), top)

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        top = max(self.top, other.top)
        a, b = self.top / top, other.top / top
        ma, mb = self.mean * a, other.mean * b
        n = self.n + other.n
        delta = mb - ma
        return Moments(n, ma + delta * other.n / n,
                       self.m2 * a * a + other.m2 * b * b + delta * delta * self.n * other.n / n, top)

    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) * self.top if self.n else float("nan")


@dataclass
class Bin:
    """Keys whose top `bits` bits are `prefix`; `below`: how many values have smaller keys."""

    prefix: int
    bits: int
    count: int
    below: int

    def select(self, keys: np.ndarray) -> np.ndarray:
        return (keys >> np.uint64(64 - self.bits)) == np.uint64(self.prefix)


@dataclass
class FieldQuantiles:
    """The radix selection of one field's quartiles, fed bucket by bucket."""

    values_cap: int = VALUES_CAP
    hist: np.ndarray | None = None
    moments: Moments = field(default_factory=Moments)
    found: dict = field(default_factory=dict)  # rank -> value
    pending: dict = field(default_factory=dict)  # (prefix, bits) -> (Bin, ranks in it)

    def add(self, hist: np.ndarray, moments: Moments) -> None:
        self.hist = hist.astype(np.int64) if self.hist is None else self.hist + hist
        self.moments = self.moments.merge(moments)

    @property
    def n(self) -> int:
        return self.moments.n

    def ranks(self) -> list[int]:
        """The order statistics np.percentile interpolates between, for q = 1/4, 1/2, 3/4."""
        n = self.n
        out = set()
        for k in QUARTILES:
            lo = (n - 1) * k // 4
            out |= {lo, min(lo + 1, n - 1)}
        return sorted(out)

    def start(self) -> None:
        if self.n:
            self._place(self.hist, 0, 0, 0, self.ranks())
        self.hist = None

    def _place(self, hist: np.ndarray, prefix: int, bits: int, below: int, ranks: list[int]) -> None:
        """Put each rank into its bin of `hist` (the sub-bins of the bin `prefix`/`bits`)."""
        digit = FIRST_BITS if bits == 0 else min(DIGIT_BITS, 64 - bits)
        cum = np.cumsum(hist)
        for r in ranks:
            b = int(np.searchsorted(cum, r - below, side="right"))
            sub = Bin((prefix << digit) | b, bits + digit, int(hist[b]), below + int(cum[b] - hist[b]))
            if sub.bits == 64:
                self.found[r] = float(key_values(np.array([sub.prefix], dtype=np.uint64))[0])
            else:
                self.pending.setdefault((sub.prefix, sub.bits), (sub, []))[1].append(r)

    def requests(self) -> list[tuple[int, int, bool]]:
        """(prefix, bits, fetch values) per pending bin: values when few enough, else a histogram."""
        return [(b.prefix, b.bits, b.count <= self.values_cap) for b, _ in self.pending.values()]

    def resolve(self, answers: list) -> None:
        """`answers`: per request, the buckets' answers (arrays of values, or histograms)."""
        pending, self.pending = list(self.pending.values()), {}
        for (b, ranks), parts in zip(pending, answers):
            if b.count <= self.values_cap:
                values = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
                for r in ranks:
                    self.found[r] = float(values[r - b.below])
            else:
                self._place(np.sum(parts, axis=0), b.prefix, b.bits, b.below, ranks)

    def quartiles(self) -> tuple[float, float, float]:
        """np.percentile(values, [25, 50, 75]): its own interpolation between the order statistics."""
        n, out = self.n, []
        for k in QUARTILES:
            lo = (n - 1) * k // 4
            gamma = ((n - 1) * k % 4) / 4  # exact: the fraction np.percentile computes for q = k/4
            pair = np.array([self.found[lo], self.found[min(lo + 1, n - 1)]])
            out.append(float(np.percentile(pair, 100 * gamma)))
        return out[0], out[1], out[2]


def answer(keys: np.ndarray, requests: list[tuple[int, int, bool]]) -> list[np.ndarray]:
    """One bucket's answers to a field's requests: its values in each bin, or the bin's histogram
    of the next digit."""
    out = []
    for prefix, bits, values in requests:
        b = Bin(prefix, bits, 0, 0)
        k = keys[b.select(keys)]
        if values:
            out.append(key_values(k))
        else:
            digit = min(DIGIT_BITS, 64 - bits)
            shift = np.uint64(64 - bits - digit)
            out.append(np.bincount(((k >> shift) & np.uint64((1 << digit) - 1)).astype(np.int64),
                                   minlength=1 << digit))
    return out


def robust_stats_of(q: FieldQuantiles) -> tuple[float, float]:
    """ingest.robust_stats from the selection: (median, IQR / 1.349), the standard deviation where
    the IQR is 0, and 1 where that is 0 too."""
    if q.n == 0:
        return 0.0, 1.0
    q25, center, q75 = q.quartiles()
    scale = (q75 - q25) / 1.349
    if not scale > 0:
        scale = q.moments.std()
    if not scale > 0 or not np.isfinite(scale):
        scale = 1.0
    return float(center), float(scale)
