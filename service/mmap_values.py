"""Record one call's six metric values with one lock, straight into the mmap.

Through prometheus_client's public API, one call costs four metric
operations and six value writes, each taking the library's lock, asking the
kernel for the pid and looking up the value's place in the file. Writing the
same bytes at the same places directly, under one lock, makes
``record_tokens`` about twice as fast (``benchmarks/bench_record_tokens.py``).

This relies on private details of prometheus_client's multiprocess values
(``MmapedValue._value``, ``._file``, ``._key``; ``MmapedDict._positions`` and
``._m``; a value and a timestamp packed as two doubles). The version range in
``pyproject.toml`` is the one checked, and
``tests/test_prometheus_contract.py`` fails if a release changes them; where
the details are missing, ``direct_writer`` returns ``None`` and the public
API is used instead.

The values written here must not also be changed through the public API in
the same process, since the two paths take different locks.
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections.abc import Sequence
from typing import Any

_PACK_VALUE = struct.Struct("dd").pack
_VALUE_BYTES = 16


class DirectSeriesWriter:
    """Write one provider's histogram and counter values for each call."""

    def __init__(
        self, input_child: Any, output_child: Any, input_total: Any, output_total: Any
    ) -> None:
        self.upper_bounds: Sequence[float] = input_child._upper_bounds
        values = [
            input_child._sum,
            *input_child._buckets,
            output_child._sum,
            *output_child._buckets,
            input_total._value,
            output_total._value,
        ]
        for value in values:
            # get() makes prometheus_client notice a fork and reopen this
            # process's own files before their places are read below.
            value.get()
        self.slots = [
            (value, value._file, value._file._positions[value._key]) for value in values
        ]
        self.output_start = 1 + len(self.upper_bounds)
        self.total_start = 2 * self.output_start
        self.lock = threading.Lock()

    def record(self, input_tokens: int, output_tokens: int) -> None:
        """Add one call: a histogram observation per type and both counters."""
        input_bucket = bisect.bisect_left(self.upper_bounds, input_tokens)
        output_bucket = bisect.bisect_left(self.upper_bounds, output_tokens)
        output_start, total_start = self.output_start, self.total_start

        additions = (
            (0, input_tokens),
            (1 + input_bucket, 1),
            (output_start, output_tokens),
            (output_start + 1 + output_bucket, 1),
            (total_start, input_tokens),
            (total_start + 1, output_tokens),
        )
        slots = self.slots
        with self.lock:
            for slot, amount in additions:
                value, values_file, position = slots[slot]
                value._value += amount
                # One slice assignment, as prometheus_client does, so that a
                # reader never sees half a double; _m is looked up each time
                # because the file is remapped when it grows.
                values_file._m[position : position + _VALUE_BYTES] = _PACK_VALUE(
                    value._value, 0.0
                )


def direct_writer(
    input_child: Any, output_child: Any, input_total: Any, output_total: Any
) -> DirectSeriesWriter | None:
    """Return a direct writer, or ``None`` outside multiprocess mode."""
    if not getattr(input_total._value, "_multiprocess", False):
        return None

    try:
        return DirectSeriesWriter(input_child, output_child, input_total, output_total)
    except (AttributeError, KeyError):
        return None
