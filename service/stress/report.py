"""The outcome of a run, its verdict, and the two ways to print it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from service.stress.latency import LatencyHistogram
from service.stress.verdict import Comparison, Mismatch

_MISMATCHES_SHOWN = 8
_REASONS_SHOWN = 3


@dataclass(frozen=True)
class WorkerFacts:
    """What happened to the workers of a service the tool started itself."""

    workers: int
    boots: int
    kill_requested: bool
    killed_pid: int | None


@dataclass(frozen=True)
class RunResult:
    """Everything a run measured, ready to judge and print."""

    mode: str
    target: str
    requests_acknowledged: int
    requests_failed: int
    comparison: Comparison
    elapsed_seconds: float
    latency: LatencyHistogram
    failure_reasons: dict[str, int] = field(default_factory=dict)
    workers: WorkerFacts | None = None

    @property
    def passed(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        """Return, as phrases, every reason the run fails."""
        result, problems = self.comparison, []
        floor = "at least " if result.unconfirmed_calls else ""

        if self.requests_failed:
            problems.append(
                f"{self.requests_failed:,} requests failed, so their "
                f"{result.unconfirmed_calls:,} calls may or may not be counted"
            )
        if result.lost_calls:
            problems.append(f"{floor}{result.lost_calls:,} calls lost")
        if result.double_counted_calls:
            problems.append(f"{result.double_counted_calls:,} calls counted twice")
        if result.mismatches and not (result.lost_calls or result.double_counted_calls):
            problems.append(f"{len(result.mismatches)} series differ")
        if self.workers and self.workers.kill_requested and not self.workers.killed_pid:
            problems.append("no worker was killed")

        return problems

    def verdict(self) -> str:
        """Return the one-sentence verdict."""
        if self.passed:
            where = "/metrics" if self.mode == "http" else "the merged files"
            return f"PASS: every sent call is counted in {where}, exactly once."

        return "FAIL: " + "; ".join(self.problems()) + "."

    @property
    def rate_calls(self) -> float:
        return _per_second(self.comparison.sent_calls, self.elapsed_seconds)

    @property
    def rate_requests(self) -> float:
        return _per_second(self.requests_acknowledged, self.elapsed_seconds)


def _per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def render_json(result: RunResult) -> str:
    """Return the result as one line of JSON."""
    comparison = result.comparison
    document: dict[str, object] = {
        "mode": result.mode,
        "target": result.target,
        "passed": result.passed,
        "verdict": result.verdict(),
        "sent_requests": result.requests_acknowledged + result.requests_failed,
        "acknowledged_requests": result.requests_acknowledged,
        "errors": result.requests_failed,
        "sent_calls": comparison.sent_calls,
        "unconfirmed_calls": comparison.unconfirmed_calls,
        "recorded_calls": comparison.counted_calls,
        "lost": comparison.lost_calls,
        "double_counted": comparison.double_counted_calls,
        "mismatched_series": [_mismatch_json(m) for m in comparison.mismatches],
        "rps": round(result.rate_requests, 1),
        "calls_per_second": round(result.rate_calls, 1),
        "p50_ms": _rounded(result.latency.percentile_ms(0.50)),
        "p99_ms": _rounded(result.latency.percentile_ms(0.99)),
        "elapsed_seconds": round(result.elapsed_seconds, 3),
        "error_reasons": result.failure_reasons,
    }
    if result.workers is not None:
        document["workers"] = result.workers.workers
        document["worker_boots"] = result.workers.boots
        document["killed_worker_pid"] = result.workers.killed_pid

    return json.dumps(document, separators=(",", ":"))


def _mismatch_json(mismatch: Mismatch) -> dict[str, object]:
    return {
        "sample": mismatch.sample,
        "provider": mismatch.provider,
        "type": mismatch.token_type,
        "sent": mismatch.sent,
        "unconfirmed": mismatch.unconfirmed,
        "counted": mismatch.counted,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_text(result: RunResult) -> str:
    """Return the short human report."""
    comparison = result.comparison
    http = result.mode == "http"
    lines = [
        f"Target:          {result.target}",
        f"Sent:            {comparison.sent_calls:,} calls "
        + (
            f"in {result.requests_acknowledged:,} acknowledged requests"
            if http
            else "to record_tokens that returned"
        ),
        f"Counted:         {comparison.counted_calls:,} calls "
        + ("in /metrics" if http else "in the merged files"),
        f"Lost:            {comparison.lost_calls:,}",
        f"Counted twice:   {comparison.double_counted_calls:,}",
        f"Errors:          {result.requests_failed:,} "
        + ("failed requests" if http else "record_tokens calls that raised")
        + f" ({comparison.unconfirmed_calls:,} calls unconfirmed)",
        f"Rate:            {_rate_text(result)}",
        "Latency:         " + _latency_text(result.latency),
    ]
    lines += _worker_lines(result.workers)
    lines += _reason_lines(result.failure_reasons)
    lines += _mismatch_lines(comparison.mismatches)
    lines.append(f"Verdict:         {result.verdict()}")
    return "\n".join(lines)


def _rate_text(result: RunResult) -> str:
    over = f"over {result.elapsed_seconds:.2f} s"
    if result.mode != "http":
        return f"{result.rate_calls:,.0f} calls/s {over}"

    return (
        f"{result.rate_calls:,.0f} calls/s, {result.rate_requests:,.0f} requests/s "
        + over
    )


def _latency_text(latency: LatencyHistogram) -> str:
    p50, p99 = latency.percentile_ms(0.50), latency.percentile_ms(0.99)
    if p50 is None or p99 is None:
        return "no calls answered"

    return f"p50 {p50:.3g} ms, p99 {p99:.3g} ms"


def _worker_lines(workers: WorkerFacts | None) -> list[str]:
    if workers is None:
        return []

    replaced = max(0, workers.boots - workers.workers)
    killed = f", killed pid {workers.killed_pid}" if workers.killed_pid else ""
    return [
        f"Workers:         {workers.workers} at start, {replaced} replaced "
        f"(recycled or killed){killed}"
    ]


def _reason_lines(reasons: dict[str, int]) -> list[str]:
    ranked = sorted(reasons.items(), key=lambda item: -item[1])[:_REASONS_SHOWN]
    return [f"  failure ({count:,}x): {reason}" for reason, count in ranked]


def _mismatch_lines(mismatches: tuple[Mismatch, ...]) -> list[str]:
    lines = [
        f'  {m.sample}{{provider="{m.provider}",type="{m.token_type}"}}: '
        f"sent {m.sent:,.0f}, counted {m.counted:,.0f}"
        + (f" (+ up to {m.unconfirmed:,.0f} unconfirmed)" if m.unconfirmed else "")
        for m in mismatches[:_MISMATCHES_SHOWN]
    ]
    if len(mismatches) > _MISMATCHES_SHOWN:
        lines.append(f"  ... and {len(mismatches) - _MISMATCHES_SHOWN} more series")

    return lines
