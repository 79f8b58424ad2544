"""Per-series totals: what the tool recorded, and what ``/metrics`` counted.

A tally holds, for each provider and token type, the three samples the check
compares: the counter ``llm_tokens_total`` and the histogram's ``_count`` and
``_sum``. Values are floats, as in a scrape; they stay exact integers up to
2**53, far beyond what a run can send.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from service.stress.errors import SetupError

TOKENS_TOTAL = "llm_tokens_total"
CONSUMED_COUNT = "llm_tokens_consumed_count"
CONSUMED_SUM = "llm_tokens_consumed_sum"
SAMPLE_NAMES = (TOKENS_TOTAL, CONSUMED_COUNT, CONSUMED_SUM)
TOKEN_TYPES = ("input", "output")

# (sample name, provider, token type)
SampleKey = tuple[str, str, str]


class Tally:
    """The compared samples of every (provider, type) series."""

    def __init__(self, values: Iterable[tuple[SampleKey, float]] = ()) -> None:
        self.values: defaultdict[SampleKey, float] = defaultdict(float)
        for key, value in values:
            self.values[key] += value

    def add_call(self, provider: str, input_tokens: int, output_tokens: int) -> None:
        """Add one call as the service records it: one observation per type."""
        for token_type, tokens in zip(
            TOKEN_TYPES, (input_tokens, output_tokens), strict=True
        ):
            self.values[(TOKENS_TOTAL, provider, token_type)] += tokens
            self.values[(CONSUMED_COUNT, provider, token_type)] += 1
            self.values[(CONSUMED_SUM, provider, token_type)] += tokens

    def merge(self, other: Tally) -> None:
        """Add every value of ``other`` to this tally."""
        for key, value in other.values.items():
            self.values[key] += value

    def minus(self, earlier: Tally) -> Tally:
        """Return the increase from ``earlier`` to this tally."""
        keys = set(self.values) | set(earlier.values)
        return Tally(
            (key, self.values.get(key, 0.0) - earlier.values.get(key, 0.0))
            for key in keys
        )

    def get(self, sample: str, provider: str, token_type: str) -> float:
        """Return one value, 0 for a series that does not exist."""
        return self.values.get((sample, provider, token_type), 0.0)

    def providers(self) -> set[str]:
        """Return the providers that have a value in this tally."""
        return {provider for _, provider, _ in self.values}

    def calls(self) -> int:
        """Return the number of calls: the input observations of every provider."""
        return round(
            sum(
                value
                for (sample, _, token_type), value in self.values.items()
                if sample == CONSUMED_COUNT and token_type == "input"
            )
        )

    def to_json(self) -> list[list[str | float]]:
        """Return the values as a JSON-ready list of [sample, provider, type, value]."""
        return [[*key, value] for key, value in sorted(self.values.items())]

    @classmethod
    def from_json(cls, document: list[list[str | float]]) -> Tally:
        """Rebuild a tally from ``to_json``'s output."""
        return cls(
            ((str(sample), str(provider), str(token_type)), float(value))
            for sample, provider, token_type, value in document
        )


def tally_from_exposition(text: str) -> Tally:
    """Read the compared samples out of a Prometheus text exposition."""
    tally = Tally()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in SAMPLE_NAMES:
                    key = (
                        sample.name,
                        sample.labels.get("provider", ""),
                        sample.labels.get("type", ""),
                    )
                    tally.values[key] += sample.value
    except ValueError as exc:
        raise SetupError(
            f"The metrics are not valid Prometheus text ({exc}); "
            "is this an llm-token-metrics service?"
        ) from exc

    return tally
