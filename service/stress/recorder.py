"""One recording process of ``--mode processes``: threads that call record_tokens.

The parent runs ``python -m service.stress.recorder JOB`` with
``PROMETHEUS_MULTIPROC_DIR`` already in the environment, because
prometheus_client settles on multiprocess mode when it is first imported.
The process talks to the parent in lines: it writes ``ready`` once it can
record, waits for ``go`` on stdin, writes ``progress CALLS ERRORS`` while its
threads record, and ``result JSON`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from service import metrics
from service.config import ProviderQuota, Settings
from service.multiproc_dir import MULTIPROC_ENV
from service.stress.http_client import describe
from service.stress.outcome import Outcome
from service.stress.workload import Call, CallSource, Job, share

_PROGRESS_SECONDS = 0.25


def main(argv: Sequence[str] | None = None) -> int:
    """Record the job given as the only argument; return the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    if not os.environ.get(MULTIPROC_ENV) or len(arguments) != 1:
        print(
            f"This is a part of the stress tool; it needs {MULTIPROC_ENV} and a "
            "job. Run python -m service.stress --mode processes instead.",
            file=sys.stderr,
        )
        return 2

    job = Job.from_json(arguments[0])
    providers = {name: ProviderQuota(name) for name in job.providers}
    metrics.configure(Settings(providers=providers, source="the stress tool"))

    _say("ready")
    if sys.stdin.readline().strip() != "go":
        return 1

    started = time.monotonic()
    outcomes = _record_in_threads(job)
    elapsed = time.monotonic() - started
    _say("result " + json.dumps({**_result(outcomes), "elapsed_seconds": elapsed}))
    return 0


def _record_in_threads(job: Job) -> list[Outcome]:
    deadline = time.monotonic() + (job.duration_seconds or 0)
    outcomes = [Outcome() for _ in range(job.threads)]
    threads = [
        threading.Thread(
            target=_record, args=(job, index, deadline, outcomes[index]), daemon=True
        )
        for index in range(job.threads)
    ]
    for thread in threads:
        thread.start()

    # Every thread's loop is bounded by its count or the deadline.
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=_PROGRESS_SECONDS)
            calls = sum(outcome.succeeded + outcome.failed for outcome in outcomes)
            errors = sum(outcome.failed for outcome in outcomes)
            _say(f"progress {calls} {errors}")

    return outcomes


def _record(job: Job, index: int, deadline: float, outcome: Outcome) -> None:
    """Call record_tokens this thread's share of times, or until the deadline."""
    source = CallSource(job.providers, 1, seed=job.seed + index)
    calls = None if job.calls is None else share(job.calls, job.threads, index)

    while _more(outcome.succeeded + outcome.failed, calls, deadline):
        call = source.next_call()
        started = time.perf_counter()
        try:
            metrics.record_tokens(call.provider, call.input_tokens, call.output_tokens)
        except Exception as exc:  # a thread's edge: count it, keep the run going
            outcome.latency.add(time.perf_counter() - started)
            outcome.unconfirmed.add_call(*_fields(call))
            outcome.failed += 1
            outcome.reasons[describe(exc)] += 1
        else:
            outcome.latency.add(time.perf_counter() - started)
            outcome.sent.add_call(*_fields(call))
            outcome.succeeded += 1


def _more(done: int, calls: int | None, deadline: float) -> bool:
    if calls is not None:
        return done < calls

    return time.monotonic() < deadline


def _fields(call: Call) -> tuple[str, int, int]:
    return call.provider, call.input_tokens, call.output_tokens


def _result(outcomes: list[Outcome]) -> dict[str, Any]:
    total = Outcome()
    for outcome in outcomes:
        total.merge(outcome)

    return {
        "sent": total.sent.to_json(),
        "unconfirmed": total.unconfirmed.to_json(),
        "latency": total.latency.to_json(),
        "errors": total.failed,
        "reasons": dict(total.reasons),
    }


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
