"""Compare what the tool sent with what the service counted.

The definitions, which the help text and the README repeat:

- sent: the calls of the requests that the service acknowledged (200 with
  ``{"recorded": N}`` for a request of N calls);
- unconfirmed: the calls of the requests that failed without a clear refusal
  (no answer, a timeout, a 5xx): the service may or may not have recorded
  them;
- counted: for each provider, the increase of ``llm_tokens_consumed_count``
  over the run, taking the smaller of its ``input`` and ``output`` series,
  since a call is fully counted only with both observations;
- lost: sent calls missing from the counted ones, provider by provider;
- counted twice: calls counted beyond those sent and unconfirmed.

Without unconfirmed calls both numbers are exact. With some, "lost" is a
floor (an unconfirmed call that was recorded can hide a lost one), which is
why any failed request fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.stress.tally import CONSUMED_COUNT, Tally


@dataclass(frozen=True)
class Mismatch:
    """One compared sample whose counted value is not what was sent."""

    sample: str
    provider: str
    token_type: str
    sent: float
    unconfirmed: float
    counted: float


@dataclass(frozen=True)
class Comparison:
    """The outcome of the comparison, in calls and in samples."""

    sent_calls: int
    unconfirmed_calls: int
    counted_calls: int
    lost_calls: int
    double_counted_calls: int
    mismatches: tuple[Mismatch, ...]


def compare(sent: Tally, counted: Tally, unconfirmed: Tally) -> Comparison:
    """Compare the sent and counted tallies, allowing for unconfirmed calls."""
    counted_calls = lost_calls = double_counted_calls = 0
    providers = sent.providers() | counted.providers() | unconfirmed.providers()

    for provider in sorted(providers):
        sent_p = sent.get(CONSUMED_COUNT, provider, "input")
        unconfirmed_p = unconfirmed.get(CONSUMED_COUNT, provider, "input")
        input_p = counted.get(CONSUMED_COUNT, provider, "input")
        output_p = counted.get(CONSUMED_COUNT, provider, "output")

        counted_calls += round(min(input_p, output_p))
        lost_calls += round(max(0.0, sent_p - min(input_p, output_p)))
        double_counted_calls += round(
            max(0.0, max(input_p, output_p) - sent_p - unconfirmed_p)
        )

    return Comparison(
        sent_calls=sent.calls(),
        unconfirmed_calls=unconfirmed.calls(),
        counted_calls=counted_calls,
        lost_calls=lost_calls,
        double_counted_calls=double_counted_calls,
        mismatches=_mismatches(sent, counted, unconfirmed),
    )


def _mismatches(
    sent: Tally, counted: Tally, unconfirmed: Tally
) -> tuple[Mismatch, ...]:
    """List the samples outside [sent, sent + unconfirmed]."""
    keys = set(sent.values) | set(counted.values) | set(unconfirmed.values)
    mismatches = []
    for key in sorted(keys):
        low = sent.values.get(key, 0.0)
        extra = unconfirmed.values.get(key, 0.0)
        value = counted.values.get(key, 0.0)
        if not low <= value <= low + extra:
            mismatches.append(
                Mismatch(*key, sent=low, unconfirmed=extra, counted=value)
            )

    return tuple(mismatches)
