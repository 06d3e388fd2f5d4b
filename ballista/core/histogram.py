"""A log-linear (HDR-style) latency histogram: fixed memory, < 1% error, mergeable.

Values are seconds, kept as integer nanoseconds: exact below 256 ns, then 128
linear sub-buckets per power of two, so a reported value (the bucket's midpoint,
clamped to the exact min and max seen) is within 0.4% of the truth.
"""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from itertools import accumulate
from operator import add
from typing import Any

from ballista.core.snapshot import PERCENTILES, LatencySummary

_SUB_BITS = 7
_SUB = 1 << _SUB_BITS  # sub-buckets per power of two above the exact range
_EXACT = 2 * _SUB  # values below this many nanoseconds have a bucket each
#: Largest relative distance between a value and its bucket's midpoint (half a
#: bucket of width 1/128 of its lowest value): the error bound of a percentile.
RELATIVE_ERROR = 1 / (2 * _SUB)
#: Values from this many nanoseconds (~78 h) up share the top bucket.
_LIMIT_BITS = 48
_LIMIT = 1 << _LIMIT_BITS
# The largest shift is _LIMIT_BITS - _SUB_BITS - 1, and its last bucket is (shift + 2) * _SUB - 1.
_NBUCKETS = (_LIMIT_BITS - _SUB_BITS + 1) << _SUB_BITS
_TOP = _NBUCKETS - 1

#: Names the bucket layout in serialised histograms (`to_dict`): nanoseconds,
#: 2**7 linear sub-buckets per power of two. Another layout cannot be merged.
HISTOGRAM_LAYOUT = f"log-linear-ns/{_SUB_BITS}"

#: Bytes `nbytes` charges per bucket for the int object a large count needs.
_INT_BYTES = 32


def _index(ns: int) -> int:
    """Bucket of a value in nanoseconds (>= 0). `Histogram.record` inlines this."""
    if ns < _EXACT:
        return ns
    if ns >= _LIMIT:
        return _TOP
    shift = ns.bit_length() - (_SUB_BITS + 1)
    # == EXACT + (shift - 1) * SUB + ((ns >> shift) - SUB)
    return (shift << _SUB_BITS) + (ns >> shift)


def _bounds(index: int) -> tuple[int, int]:
    """The lowest value of a bucket and its width, in nanoseconds."""
    if index < _EXACT:
        return index, 1
    shift = (index >> _SUB_BITS) - 1
    return ((index & (_SUB - 1)) + _SUB) << shift, 1 << shift


def _midpoint(index: int) -> float:
    # Values are rounded to the nearest ns, so a bucket covers [low - 0.5, low + width - 0.5).
    low, width = _bounds(index)
    return (low + (width - 1) / 2) / 1e9


#: Representative value (seconds) of each bucket; strictly increasing.
_MIDPOINTS: tuple[float, ...] = tuple(_midpoint(i) for i in range(_NBUCKETS))
_QUANTILES: tuple[float, ...] = tuple(q for _, q in PERCENTILES)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rank(q: float, count: int) -> int:
    """1-based rank of the q-th percentile of `count` values: ceil(q/100 * count), at least 1.

    The product is shrunk by a relative 1e-12 first, so float noise in q does
    not push an integral rank up (99.9% of 1000 values is rank 999, not 1000).
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q!r} is outside [0, 100]")
    return max(1, math.ceil(q / 100.0 * count * (1.0 - 1e-12)))


class Histogram:
    """Latency histogram of fixed size (5,376 buckets, about 210 KiB at most), sans-IO.

    `record` is the hot path. Percentile queries and merges only walk the
    buckets between the smallest and the largest value seen.
    """

    __slots__ = ("_counts", "_max", "_min", "count", "total")

    #: Number of values recorded.
    count: int
    #: Sum of the values recorded, in seconds.
    total: float

    def __init__(self) -> None:
        self._counts: list[int] = [0] * _NBUCKETS
        self.count = 0
        self.total = 0.0
        self._min = math.inf
        self._max = 0.0

    def __repr__(self) -> str:
        return (
            f"Histogram(count={self.count}, min={self.min:.6g}, "
            f"mean={self.mean:.6g}, max={self.max:.6g})"
        )

    # -- recording ---------------------------------------------------------

    def record(self, seconds: float) -> None:
        """Record one value in seconds; negative values count as 0."""
        # Plain ifs, not min()/max(): a builtin call costs more than the comparison.
        if seconds < 0.0:  # noqa: PLR1730
            seconds = 0.0
        ns = int(seconds * 1e9 + 0.5)
        # _index(ns) inlined (a call would cost a third of the time); 256 == _EXACT,
        # 8 == _SUB_BITS + 1, 7 == _SUB_BITS.
        if ns < 256:
            self._counts[ns] += 1
        elif ns < _LIMIT:
            shift = ns.bit_length() - 8
            self._counts[(shift << 7) + (ns >> shift)] += 1
        else:
            self._counts[_TOP] += 1
        self.count += 1
        self.total += seconds
        if seconds < self._min:  # noqa: PLR1730
            self._min = seconds
        if seconds > self._max:  # noqa: PLR1730
            self._max = seconds

    def record_n(self, seconds: float, n: int) -> None:
        """Record the same value `n` times."""
        if n <= 0:
            if n == 0:
                return
            raise ValueError(f"cannot record a value {n} times")
        seconds = max(seconds, 0.0)
        self._counts[_index(int(seconds * 1e9 + 0.5))] += n
        self.count += n
        self.total += seconds * n
        self._min = min(self._min, seconds)
        self._max = max(self._max, seconds)

    # -- figures -----------------------------------------------------------

    @property
    def min(self) -> float:
        """The smallest value recorded (exact), 0.0 when empty."""
        return self._min if self.count else 0.0

    @property
    def max(self) -> float:
        """The largest value recorded (exact, even beyond the top bucket), 0.0 when empty."""
        return self._max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def nbytes(self) -> int:
        """Upper bound of the memory held, in bytes; independent of the number of values."""
        return sys.getsizeof(self) + sys.getsizeof(self._counts) + _NBUCKETS * _INT_BYTES

    def _span(self) -> tuple[int, int]:
        """First and last bucket that may be non-empty (the buckets of min and max)."""
        return _index(int(self._min * 1e9 + 0.5)), _index(int(self._max * 1e9 + 0.5))

    def _value(self, index: int) -> float:
        value = _MIDPOINTS[index]
        if value < self._min:
            return self._min
        if value > self._max:
            return self._max
        return value

    def percentile(self, q: float) -> float:
        """The value at rank ceil(q/100 * count), like HdrHistogram's getValueAtPercentile.

        `q` is in [0, 100]. Rank 1 gives the exact min, rank `count` the exact
        max; other ranks their bucket's midpoint clamped to [min, max]. 0.0 when empty.
        """
        return self.percentiles((q,))[0]

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        """`percentile(q)` for each q, in one pass over the buckets."""
        count = self.count
        ranks = [_rank(q, count) for q in qs]
        if not count:
            return [0.0] * len(ranks)
        first, last = self._span()
        running = list(accumulate(self._counts[first : last + 1]))
        out: list[float] = []
        for rank in ranks:
            if rank == 1:
                out.append(self._min)
            elif rank >= count:
                out.append(self._max)
            else:
                out.append(self._value(first + bisect_left(running, rank)))
        return out

    def summary(self) -> LatencySummary:
        """min, mean, p50, p90, p95, p99, p99.9 and max."""
        p50, p90, p95, p99, p999 = self.percentiles(_QUANTILES)
        return LatencySummary(
            count=self.count,
            min=self.min,
            mean=self.mean,
            p50=p50,
            p90=p90,
            p95=p95,
            p99=p99,
            p999=p999,
            max=self.max,
        )

    def cumulative_counts(self, bounds: Sequence[float]) -> list[int]:
        """For each upper bound in seconds, how many values are <= it (Prometheus `le`).

        Counted by bucket: a value counts when it falls in the bound's bucket or
        a lower one, so every value <= bound counts, and so may a value up to one
        bucket width (< 0.8%) above it. Bounds below the min give 0, bounds at or
        above the max give `count` (so a last bound of +Inf always matches it).
        """
        count = self.count
        if not count:
            return [0] * len(bounds)
        first, last = self._span()
        running = list(accumulate(self._counts[first : last + 1]))
        low, high = self._min, self._max
        out: list[int] = []
        for bound in bounds:
            if bound >= high:
                out.append(count)
            elif bound < low:
                out.append(0)
            else:
                # min <= bound < max, so first <= this index <= last
                out.append(running[_index(int(bound * 1e9 + 0.5)) - first])
        return out

    # -- combining ---------------------------------------------------------

    def merge(self, other: Histogram) -> None:
        """Add `other`'s values to this histogram."""
        if not other.count:
            return
        first, last = other._span()
        counts = self._counts
        counts[first : last + 1] = map(
            add, counts[first : last + 1], other._counts[first : last + 1]
        )
        self.count += other.count
        self.total += other.total
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def to_dict(self) -> dict[str, Any]:
        """The histogram as plain data, sparse (non-empty buckets, ascending index):
        what the JSON summary and the run store keep, and `from_dict` reads back exactly."""
        index: list[int] = []
        counts: list[int] = []
        if self.count:
            first, last = self._span()
            for i, n in enumerate(self._counts[first : last + 1], first):
                if n:
                    index.append(i)
                    counts.append(n)
        return {
            "count": self.count,
            "sum_s": self.total,
            "min_s": self.min,
            "max_s": self.max,
            "index": index,
            "counts": counts,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Histogram:
        """Read back `to_dict`'s form; ValueError naming what is wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError("a histogram must be an object")
        try:
            index, counts = doc["index"], doc["counts"]
            count, total = doc["count"], doc["sum_s"]
            low, high = doc["min_s"], doc["max_s"]
        except KeyError as exc:
            raise ValueError(f"a histogram needs {exc.args[0]!r}") from None
        if not isinstance(index, list) or not isinstance(counts, list):
            raise ValueError("histogram 'index' and 'counts' must be lists")
        if len(index) != len(counts):
            raise ValueError("histogram 'index' and 'counts' differ in length")
        if not _is_count(count) or not all(_is_count(n) and n > 0 for n in counts):
            raise ValueError("histogram counts must be positive integers")
        if not all(isinstance(v, int | float) for v in (total, low, high)):
            raise ValueError("histogram 'sum_s', 'min_s' and 'max_s' must be numbers")
        if sum(counts) != count:
            raise ValueError(f"histogram buckets hold {sum(counts)} values, not {count}")
        hist = cls()
        previous = -1
        for i, n in zip(index, counts, strict=True):
            if not _is_count(i) or i <= previous or i >= _NBUCKETS:
                raise ValueError(f"histogram bucket index {i!r} is out of order or range")
            previous = i
            hist._counts[i] = n
        hist.count = count
        if count:
            hist.total = float(total)
            hist._min = float(low)
            hist._max = float(high)
        return hist

    def copy(self) -> Histogram:
        """An independent histogram with the same values."""
        twin = Histogram.__new__(Histogram)
        twin._counts = self._counts.copy()
        twin.count = self.count
        twin.total = self.total
        twin._min = self._min
        twin._max = self._max
        return twin

    def reset(self) -> None:
        """Forget every value."""
        if self.count:
            first, last = self._span()
            self._counts[first : last + 1] = [0] * (last + 1 - first)
        self.count = 0
        self.total = 0.0
        self._min = math.inf
        self._max = 0.0


class SparseHistogram:
    """An immutable histogram that holds only its non-empty buckets.

    What keeps many histograms cheap (a timeline's points, a store's rows): a
    few hundred buckets instead of 5,376. Same values, same figures as the
    `Histogram` it came from; `to_histogram` gives a full one back for queries.
    """

    __slots__ = ("count", "counts", "index", "max", "min", "total")

    def __init__(
        self,
        index: Sequence[int] = (),
        counts: Sequence[int] = (),
        *,
        count: int = 0,
        total: float = 0.0,
        low: float = 0.0,
        high: float = 0.0,
    ) -> None:
        # Machine integers, not int objects: 12 bytes a bucket instead of ~70, so a
        # timeline's 720 points of a few hundred buckets each stay a few MB.
        self.index = array("I", index)
        self.counts = array("Q", counts)
        self.count = count
        self.total = total
        self.min = low if count else 0.0
        self.max = high if count else 0.0

    def __repr__(self) -> str:
        return f"SparseHistogram(count={self.count}, buckets={len(self.index)})"

    @classmethod
    def of(cls, hist: Histogram) -> SparseHistogram:
        doc = hist.to_dict()
        return cls(
            doc["index"],
            doc["counts"],
            count=hist.count,
            total=hist.total,
            low=hist.min,
            high=hist.max,
        )

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SparseHistogram:
        """Read `Histogram.to_dict`'s form (validated); ValueError naming what is wrong."""
        return cls.of(Histogram.from_dict(doc))

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum_s": self.total,
            "min_s": self.min,
            "max_s": self.max,
            "index": list(self.index),
            "counts": list(self.counts),
        }

    def to_histogram(self) -> Histogram:
        hist = Histogram()
        counts = hist._counts
        for i, n in zip(self.index, self.counts, strict=True):
            counts[i] = n
        hist.count = self.count
        if self.count:
            hist.total = self.total
            hist._min = self.min
            hist._max = self.max
        return hist

    def plus(self, other: SparseHistogram) -> SparseHistogram:
        """Both histograms' values together."""
        if not other.count:
            return self
        if not self.count:
            return other
        merged: dict[int, int] = dict(zip(self.index, self.counts, strict=True))
        for i, n in zip(other.index, other.counts, strict=True):
            merged[i] = merged.get(i, 0) + n
        keys = sorted(merged)
        return SparseHistogram(
            keys,
            [merged[k] for k in keys],
            count=self.count + other.count,
            total=self.total + other.total,
            low=min(self.min, other.min),
            high=max(self.max, other.max),
        )

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        return self.to_histogram().percentiles(qs)

    def summary(self) -> LatencySummary:
        return self.to_histogram().summary()

    @property
    def nbytes(self) -> int:
        """Roughly the memory held, in bytes."""
        return 300 + self.index.itemsize * len(self.index) + self.counts.itemsize * len(self.counts)
