"""The calls the stress tool records: known providers and token counts."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Token counts land in every bucket of llm_tokens_consumed, +Inf included,
# so that a fault in any bucket's arithmetic would show in the _sum.
_TOKEN_RANGES = (
    (0, 100),
    (100, 1_000),
    (1_000, 5_000),
    (5_000, 12_000),
    (12_000, 300_000),
)
_RANGE_WEIGHTS = (20, 35, 25, 15, 5)


@dataclass(frozen=True, slots=True)
class Call:
    """One LLM call to record."""

    provider: str
    input_tokens: int
    output_tokens: int


class CallSource:
    """Draw calls from a seeded generator, so that a run can be repeated."""

    def __init__(self, providers: Sequence[str], max_batch: int, seed: int):
        self.providers = tuple(providers)
        self.max_batch = max_batch
        self._random = random.Random(seed)

    def next_call(self) -> Call:
        """Return one call of a random provider with random token counts."""
        return Call(self._random.choice(self.providers), self._tokens(), self._tokens())

    def next_batch(self) -> list[Call]:
        """Return 1 to ``max_batch`` calls, the calls of one request."""
        size = self._random.randint(1, self.max_batch)
        return [self.next_call() for _ in range(size)]

    def _tokens(self) -> int:
        low, high = self._random.choices(_TOKEN_RANGES, _RANGE_WEIGHTS)[0]
        return self._random.randrange(low, high)


def usage_body(batch: Sequence[Call]) -> bytes:
    """Encode a usage body: one call as a JSON object, more as an array."""
    items = [
        {
            "provider": call.provider,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
        }
        for call in batch
    ]
    document = items[0] if len(items) == 1 else items
    return json.dumps(document, separators=(",", ":")).encode()


def share(total: int, parts: int, index: int) -> int:
    """Return part ``index`` of ``total`` split as evenly as possible in ``parts``."""
    return total // parts + (1 if index < total % parts else 0)


@dataclass(frozen=True)
class Job:
    """What one recording process does, as the parent describes it."""

    providers: tuple[str, ...]
    threads: int
    calls: int | None
    duration_seconds: float | None
    seed: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "providers": list(self.providers),
                "threads": self.threads,
                "calls": self.calls,
                "duration_seconds": self.duration_seconds,
                "seed": self.seed,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Job:
        document: dict[str, Any] = json.loads(text)
        return cls(
            providers=tuple(document["providers"]),
            threads=int(document["threads"]),
            calls=document["calls"],
            duration_seconds=document["duration_seconds"],
            seed=int(document["seed"]),
        )
