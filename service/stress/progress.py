"""One status line, rewritten in place while a run goes on, on a terminal only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

_INTERVAL_SECONDS = 0.5
_CLEAR_LINE = "\r\033[K"


@dataclass(frozen=True)
class Snapshot:
    """The running totals that the progress line shows."""

    calls: int
    requests: int | None
    errors: int


class ProgressLine:
    """Show sent calls, rate and errors every half second while in the block.

    On anything but a terminal it writes nothing, so that a piped report
    (``--json`` into a file, say) holds the report alone.
    """

    def __init__(self, stream: TextIO, snapshot: Callable[[], Snapshot]):
        self._stream = stream
        self._snapshot = snapshot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def __enter__(self) -> ProgressLine:
        self._started = time.monotonic()
        if self._stream.isatty():
            self._thread = threading.Thread(
                target=self._run, name="stress-progress", daemon=True
            )
            self._thread.start()

        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()

    def _run(self) -> None:
        while True:
            self._write()
            if self._stop.wait(_INTERVAL_SECONDS):
                return

    def _write(self) -> None:
        snapshot = self._snapshot()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        requests = (
            "" if snapshot.requests is None else f" in {snapshot.requests:,} requests"
        )
        line = (
            f"sent {snapshot.calls:,} calls{requests} | "
            f"{snapshot.calls / elapsed:,.0f} calls/s | "
            f"errors {snapshot.errors:,} | {elapsed:.1f} s"
        )
        self._stream.write(_CLEAR_LINE + line)
        self._stream.flush()
