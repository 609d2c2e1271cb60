"""Quantiles of a stream in fixed memory, for statistics that must not grow with the length of a run.

A log-spaced histogram: bin i (1-based) covers [smallest * (1 + r)^(i-1), smallest * (1 + r)^i), so
any quantile is known to within the relative bin width r, whatever the run length (a day at 50 Hz
is 4.3 M ticks; a list of them is 35 MB and its percentile a sort). Values below `smallest` share
one bin and values from `largest` up another; the smallest and largest values seen are kept exactly,
so a quantile falling in either of those bins is reported as that exact extreme.
"""

from __future__ import annotations

import math

import numpy as np


class StreamQuantiles:
    """count, max and quantile(q) of non-negative values added one at a time; memory fixed at construction."""

    def __init__(self, smallest: float, largest: float, relative_error: float = 0.01):
        if not 0 < smallest < largest or not relative_error > 0:
            raise ValueError(f"StreamQuantiles needs 0 < smallest < largest and relative_error > 0, got "
                             f"smallest={smallest!r} largest={largest!r} relative_error={relative_error!r}")
        self.smallest, self.largest = float(smallest), float(largest)
        self._log_growth = math.log1p(relative_error)
        inner_bins = math.ceil(math.log(self.largest / self.smallest) / self._log_growth)
        self._counts = np.zeros(inner_bins + 2, dtype=np.int64)  # [below smallest, inner..., from largest]
        self.count = 0
        self.min = math.nan
        self.max = math.nan

    @property
    def nbytes(self) -> int:
        return int(self._counts.nbytes)

    def add(self, value: float) -> None:
        value = float(value)
        if not value >= 0:  # also refuses NaN
            raise ValueError(f"StreamQuantiles takes non-negative values, got {value!r}")
        if value < self.smallest:
            index = 0
        elif value >= self.largest:
            index = self._counts.size - 1
        else:
            index = 1 + min(int(math.log(value / self.smallest) / self._log_growth), self._counts.size - 3)
        self._counts[index] += 1
        self.count += 1
        self.min = value if self.count == 1 else min(self.min, value)
        self.max = value if self.count == 1 else max(self.max, value)

    def quantile(self, q: float) -> float:
        """The q-th percentile (0..100) by nearest rank, within the relative bin width; NaN when empty."""
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.count))  # 1-based nearest rank
        index = int(np.searchsorted(np.cumsum(self._counts), rank))
        if index == 0:
            return self.min
        if index == self._counts.size - 1:
            return self.max
        middle = self.smallest * math.exp((index - 0.5) * self._log_growth)  # geometric middle of the bin
        return min(max(middle, self.min), self.max)
