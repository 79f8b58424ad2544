"""Latency percentiles that merge across threads and processes in fixed memory."""

from __future__ import annotations

import math
from collections import Counter

# Buckets one percent wide: a percentile is reported as its bucket's upper
# edge, at most 1% above the true value, whatever the number of samples.
_STEPS_PER_E = 100
_SMALLEST_SECONDS = 1e-9


class LatencyHistogram:
    """Count latencies in logarithmic buckets, one percent wide."""

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def add(self, seconds: float) -> None:
        """Count one latency."""
        bucket = math.floor(math.log(max(seconds, _SMALLEST_SECONDS)) * _STEPS_PER_E)
        self.buckets[bucket] += 1

    def merge(self, other: LatencyHistogram) -> None:
        """Add every latency counted in ``other``."""
        self.buckets.update(other.buckets)

    def percentile_ms(self, fraction: float) -> float | None:
        """Return the latency below which ``fraction`` of requests fell, in ms."""
        count = self.count
        if count == 0:
            return None

        rank = max(1, math.ceil(fraction * count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                break

        return math.exp((bucket + 1) / _STEPS_PER_E) * 1000

    def to_json(self) -> dict[str, int]:
        """Return the buckets as a JSON-ready mapping."""
        return {str(bucket): count for bucket, count in self.buckets.items()}

    @classmethod
    def from_json(cls, document: dict[str, int]) -> LatencyHistogram:
        """Rebuild a histogram from ``to_json``'s output."""
        histogram = cls()
        histogram.buckets.update({int(key): int(n) for key, n in document.items()})
        return histogram
