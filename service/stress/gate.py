"""Hold every client between two requests while a worker is killed.

A worker killed in the middle of a request leaves that request in doubt:
the service may have recorded its calls before it died, or not, and the
client cannot tell. Closing the gate first, and waiting for the requests in
flight to be answered, means the kill lands on a worker that is handling
nothing: every call sent so far has its answer, and none is half done. The
check then stays exact, and what it tests is that a killed worker's counts
survive in ``/metrics``.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

# A client never waits longer than this at a closed gate; the kill itself
# takes well under a second, so only a stuck controller would hit it.
MAX_HOLD_SECONDS = 120.0


class Gate:
    """Count requests in flight and, when closed, hold new ones back."""

    def __init__(self, close_at_request: int | None = None) -> None:
        self.closed = threading.Event()
        self._condition = threading.Condition()
        self._open = True
        self._in_flight = 0
        self._started = 0
        self._close_at = close_at_request

    def enter(self) -> None:
        """Wait while the gate is closed, then count one request in flight."""
        with self._condition:
            self._started += 1
            if self._started == self._close_at:
                self._close()

            if not self._condition.wait_for(lambda: self._open, MAX_HOLD_SECONDS):
                logger.warning(
                    "Gate still closed, sending anyway (waited: %ss)", MAX_HOLD_SECONDS
                )

            self._in_flight += 1

    def leave(self) -> None:
        """Count one request as answered (or failed)."""
        with self._condition:
            self._in_flight -= 1
            self._condition.notify_all()

    def close(self) -> None:
        """Hold back every request not yet started."""
        with self._condition:
            self._close()

    def wait_idle(self, timeout_seconds: float) -> bool:
        """Wait until no request is in flight; return whether that happened."""
        with self._condition:
            return self._condition.wait_for(
                lambda: self._in_flight == 0, timeout_seconds
            )

    def reopen(self) -> None:
        """Let the held requests go."""
        with self._condition:
            self._open = True
            self._condition.notify_all()

    def _close(self) -> None:
        self._open = False
        self.closed.set()
