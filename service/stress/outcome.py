"""What one client or recording thread sent and saw; outcomes add up into a run's."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from service.stress.latency import LatencyHistogram
from service.stress.tally import Tally


@dataclass
class Outcome:
    """Calls confirmed and in doubt, timings, and how many attempts succeeded.

    ``succeeded`` and ``failed`` count attempts: HTTP requests for a client,
    ``record_tokens`` calls for a recording thread.
    """

    sent: Tally = field(default_factory=Tally)
    unconfirmed: Tally = field(default_factory=Tally)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    succeeded: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Outcome) -> None:
        self.sent.merge(other.sent)
        self.unconfirmed.merge(other.unconfirmed)
        self.latency.merge(other.latency)
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.reasons.update(other.reasons)
