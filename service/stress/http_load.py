"""HTTP mode: concurrent clients post usage, and ``/metrics`` must count it all."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from service.stress.errors import SetupError
from service.stress.gate import Gate
from service.stress.gunicorn_service import GunicornService
from service.stress.http_client import (
    TRANSPORT_ERRORS,
    Answer,
    ServiceClient,
    describe,
    error_text,
    scrape,
)
from service.stress.options import Options
from service.stress.outcome import Outcome
from service.stress.progress import ProgressLine, Snapshot
from service.stress.report import RunResult, WorkerFacts
from service.stress.verdict import compare
from service.stress.workload import CallSource, share, usage_body

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 30.0
# Answers that say the run is set up wrong (a provider the service does not
# know, a missing token, a wrong URL): the service recorded nothing of such
# a request, and every further one would be refused alike, so the run stops.
REFUSAL_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 415})


class LoadState:
    """Totals shared by the clients: for the progress line, and to stop early."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.refusal: str | None = None
        self._lock = threading.Lock()
        self._calls = self._requests = self._errors = 0

    def count(self, calls: int, failed: bool) -> None:
        with self._lock:
            self._requests += 1
            self._calls += 0 if failed else calls
            self._errors += 1 if failed else 0

    def stop(self, refusal: str) -> None:
        """Stop every client; the first reason given is the one reported."""
        with self._lock:
            self.refusal = self.refusal or refusal
        self.stopped.set()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._calls, self._requests, self._errors)


@dataclass(frozen=True)
class HttpTarget:
    """The service under test, and the Gunicorn behind it when the tool owns it."""

    url: str
    description: str
    service: GunicornService | None = None


@dataclass(frozen=True)
class ClientSetup:
    """What every client of a run shares."""

    options: Options
    url: str
    gate: Gate
    state: LoadState
    deadline: float


def run_http(options: Options, target: HttpTarget, stream: TextIO) -> RunResult:
    """Scrape, load the service, scrape again, and compare."""
    scraper = ServiceClient(
        target.url, options.ingest_token, options.scrape_token, REQUEST_TIMEOUT_SECONDS
    )
    try:
        before = scrape(scraper)
        outcome, elapsed, killer = _load(options, target, stream)
        after = scrape(scraper)
    finally:
        scraper.close()

    workers = None
    if target.service is not None:
        workers = WorkerFacts(
            workers=target.service.workers,
            boots=target.service.worker_boots(),
            kill_requested=options.kill_worker,
            killed_pid=killer.killed_pid if killer else None,
        )

    return RunResult(
        mode="http",
        target=target.description,
        requests_acknowledged=outcome.succeeded,
        requests_failed=outcome.failed,
        comparison=compare(outcome.sent, after.minus(before), outcome.unconfirmed),
        elapsed_seconds=elapsed,
        latency=outcome.latency,
        failure_reasons=dict(outcome.reasons),
        workers=workers,
    )


def _load(
    options: Options, target: HttpTarget, stream: TextIO
) -> tuple[Outcome, float, WorkerKiller | None]:
    """Run the clients (and the worker kill); return their outcome and the time."""
    state = LoadState()
    gate = Gate(_kill_at_request(options))
    finished = threading.Event()
    killer = _killer(options, target, gate, finished)

    deadline = time.monotonic() + (options.duration_seconds or 0)
    setup = ClientSetup(options, target.url, gate, state, deadline)
    outcomes = [Outcome() for _ in range(options.clients)]

    with ProgressLine(stream, state.snapshot):
        started = time.monotonic()
        if killer is not None:
            killer.start()

        _run_clients(setup, outcomes)
        finished.set()
        held_seconds = _join_killer(killer)
        elapsed = time.monotonic() - started - held_seconds

    if state.refusal is not None:
        raise SetupError(state.refusal)

    total = Outcome()
    for outcome in outcomes:
        total.merge(outcome)

    return total, elapsed, killer


def _killer(
    options: Options, target: HttpTarget, gate: Gate, finished: threading.Event
) -> WorkerKiller | None:
    """Return the thread that kills a worker midway, if the run asks for one."""
    if not options.kill_worker or target.service is None:
        return None

    duration = options.duration_seconds
    at_seconds = None if duration is None else duration / 2
    return WorkerKiller(target.service, gate, finished, at_seconds)


def _run_clients(setup: ClientSetup, outcomes: list[Outcome]) -> None:
    threads = [
        threading.Thread(
            target=_client,
            args=(index, setup, outcome),
            name=f"stress-client-{index}",
            daemon=True,
        )
        for index, outcome in enumerate(outcomes)
    ]
    for thread in threads:
        thread.start()

    # Joined with a timeout, in a loop, so that Ctrl-C reaches the main thread.
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)


def _join_killer(killer: WorkerKiller | None) -> float:
    """Wait for the kill to be over; return how long it held the clients."""
    if killer is None:
        return 0.0

    killer.join()
    if killer.failure is not None:
        raise killer.failure

    return killer.held_seconds


def _kill_at_request(options: Options) -> int | None:
    """Return the request at which the gate closes for the kill, if by count."""
    if not options.kill_worker or options.requests is None:
        return None

    return max(1, options.requests // 2)


def _client(index: int, setup: ClientSetup, outcome: Outcome) -> None:
    """Post this client's share of the requests, or post until the deadline."""
    options = setup.options
    source = CallSource(options.providers, options.batch, seed=index)
    client = ServiceClient(
        setup.url, options.ingest_token, options.scrape_token, REQUEST_TIMEOUT_SECONDS
    )
    requests = (
        share(options.requests, options.clients, index) if options.requests else None
    )

    try:
        sent = 0
        while not setup.state.stopped.is_set():
            if requests is not None and sent >= requests:
                break
            if requests is None and time.monotonic() >= setup.deadline:
                break

            _post(client, source, setup, outcome)
            sent += 1
    except Exception as exc:  # a thread's edge: report, never die silently
        logger.exception("Client failed (client: %s)", index)
        setup.state.stop(f"A client thread failed unexpectedly: {describe(exc)}.")
    finally:
        client.close()


def _post(
    client: ServiceClient,
    source: CallSource,
    setup: ClientSetup,
    outcome: Outcome,
) -> None:
    """Post one batch and account for it by its answer."""
    batch = source.next_batch()
    body = usage_body(batch)

    setup.gate.enter()
    started = time.perf_counter()
    try:
        answer: Answer | str = client.post_usage(body)
    except TRANSPORT_ERRORS as exc:
        answer = f"no answer ({describe(exc)})"
    finally:
        setup.gate.leave()
    outcome.latency.add(time.perf_counter() - started)

    failure = _failure(answer, len(batch))
    if isinstance(answer, Answer) and answer.status in REFUSAL_STATUSES:
        setup.state.stop(_refusal(answer))
        return

    tally = outcome.unconfirmed if failure else outcome.sent
    for call in batch:
        tally.add_call(call.provider, call.input_tokens, call.output_tokens)

    if failure:
        outcome.failed += 1
        outcome.reasons[failure] += 1
    else:
        outcome.succeeded += 1
    setup.state.count(len(batch), failed=failure is not None)


def _failure(answer: Answer | str, calls: int) -> str | None:
    """Return why a request is not acknowledged, or ``None`` if it is."""
    if isinstance(answer, str):
        return answer

    if answer.status != 200:
        return f"HTTP {answer.status}: {error_text(answer.body)}"

    try:
        document = json.loads(answer.body)
    except ValueError:
        document = None

    if document != {"recorded": calls}:
        return f"HTTP 200 without recorded={calls}: {error_text(answer.body)}"

    return None


def _refusal(answer: Answer) -> str:
    if answer.status in {401, 403}:
        return (
            f"The service refused a usage request with HTTP {answer.status}; give "
            "its ingestion token with --ingest-token or LLM_METRICS_INGEST_TOKEN."
        )

    return (
        f"The service refused a usage request with HTTP {answer.status}: "
        f"{error_text(answer.body)}. Check --url and --providers against the "
        "service's configuration."
    )


class WorkerKiller(threading.Thread):
    """Close the gate midway, SIGKILL a worker once idle, and reopen the gate."""

    def __init__(
        self,
        service: GunicornService,
        gate: Gate,
        finished: threading.Event,
        at_seconds: float | None,
    ):
        super().__init__(name="stress-worker-killer", daemon=True)
        self.killed_pid: int | None = None
        self.held_seconds = 0.0
        self.failure: SetupError | None = None
        self._service = service
        self._gate = gate
        self._finished = finished
        self._at_seconds = at_seconds

    def run(self) -> None:
        try:
            if self._wait_for_midway():
                self._kill()
        except SetupError as exc:
            self.failure = exc
        except Exception as exc:  # a thread's edge: the main thread reports it
            logger.exception("Worker kill failed (arbiter pid: %s)", self._service.pid)
            self.failure = SetupError(f"The worker kill failed: {describe(exc)}.")
        finally:
            self._gate.reopen()

    def _wait_for_midway(self) -> bool:
        """Wait until the gate should close; return False if the run ended first."""
        if self._at_seconds is not None:
            if self._finished.wait(self._at_seconds):
                return False

            self._gate.close()
            return True

        # By request count, the gate closes itself on the request at midway.
        while not self._finished.is_set():
            if self._gate.closed.wait(0.05):
                return True

        return False

    def _kill(self) -> None:
        held_from = time.monotonic()
        if not self._gate.wait_idle(REQUEST_TIMEOUT_SECONDS + 5):
            logger.error("Requests still in flight, killing anyway (worker kill)")

        self.killed_pid = self._service.kill_worker()
        self.held_seconds = time.monotonic() - held_from
