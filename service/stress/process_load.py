"""Process mode: threads in processes call record_tokens; the files must count all."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any, TextIO

from prometheus_client import CollectorRegistry, generate_latest

from service.collector import WorkerFilesCollector
from service.compaction import fold_dead_worker
from service.multiproc_dir import MULTIPROC_ENV
from service.stress.errors import SetupError
from service.stress.gunicorn_service import ROOT, private_variables_removed
from service.stress.latency import LatencyHistogram
from service.stress.options import Options
from service.stress.progress import ProgressLine, Snapshot
from service.stress.report import RunResult
from service.stress.tally import Tally, tally_from_exposition
from service.stress.verdict import compare
from service.stress.workload import Job, share

logger = logging.getLogger(__name__)

_READY_SECONDS = 60.0
# Generous: record_tokens takes tens of microseconds, so a run that needs a
# millisecond a call is stuck, not slow.
_SLACK_SECONDS = 120.0
_SECONDS_PER_CALL = 0.001


class RecorderProcess:
    """One ``service.stress.recorder`` process, and the lines it writes."""

    def __init__(self, index: int, job: Job, environment: dict[str, str], log: Path):
        self.index = index
        self.calls = 0
        self.errors = 0
        self.result: dict[str, Any] | None = None
        self.ready = threading.Event()
        self._log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.stress.recorder", job.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            env=environment,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def go(self) -> None:
        stdin: IO[str] | None = self.process.stdin
        try:
            if stdin is not None:
                stdin.write("go\n")
                stdin.close()
        except BrokenPipeError:
            pass  # it has ended already; finish() says so, with its error output

    def finish(self, deadline: float) -> dict[str, Any]:
        """Return the process's result; raise ``SetupError`` if none by ``deadline``."""
        self._reader.join(timeout=max(0.0, deadline - time.monotonic()))
        try:
            status = self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = None

        if self.result is None or status != 0:
            raise SetupError(
                f"Recording process {self.index} (pid {self.process.pid}) ended "
                f"without a result (exit status: {status}); the check cannot be "
                f"made. Its error output ends with:\n{self.log_tail()}"
            )

        return self.result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()

    def log_tail(self, lines: int = 10) -> str:
        text = self._log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(nothing)"

    def _read(self) -> None:
        stdout: IO[str] | None = self.process.stdout
        if stdout is None:
            return

        for line in stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ready":
                self.ready.set()
            elif word == "progress":
                calls, errors = rest.split()
                self.calls, self.errors = int(calls), int(errors)
            elif word == "result":
                self.result = json.loads(rest)


def run_processes(options: Options, stream: TextIO) -> RunResult:
    """Record from processes into a fresh directory, merge the files, compare."""
    with tempfile.TemporaryDirectory(prefix="llm-token-stress-") as directory:
        path = Path(directory)
        multiproc_dir = path / "multiproc"
        multiproc_dir.mkdir()

        results, elapsed = _record(options, path, multiproc_dir, stream)
        counted = tally_from_exposition(merged_exposition(multiproc_dir))

    sent, unconfirmed, latency = Tally(), Tally(), LatencyHistogram()
    errors, reasons = 0, Counter[str]()
    for result in results:
        sent.merge(Tally.from_json(result["sent"]))
        unconfirmed.merge(Tally.from_json(result["unconfirmed"]))
        latency.merge(LatencyHistogram.from_json(result["latency"]))
        errors += int(result["errors"])
        reasons.update(result["reasons"])

    return RunResult(
        mode="processes",
        target=f"{options.processes} processes x {options.threads} threads calling "
        "record_tokens, fresh multiprocess directory",
        requests_acknowledged=sent.calls(),
        requests_failed=errors,
        comparison=compare(sent, counted, unconfirmed),
        elapsed_seconds=elapsed,
        latency=latency,
        failure_reasons=dict(reasons),
    )


def merged_exposition(multiproc_dir: Path) -> str:
    """Merge the directory's files as ``/metrics`` does, into Prometheus text."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerFilesCollector(multiproc_dir))
    return generate_latest(registry).decode()


def _record(
    options: Options, path: Path, multiproc_dir: Path, stream: TextIO
) -> tuple[list[dict[str, Any]], float]:
    """Start the processes, let them record together, and collect their results."""
    environment = private_variables_removed(os.environ)
    environment[MULTIPROC_ENV] = str(multiproc_dir)

    recorders: list[RecorderProcess] = []
    try:
        for index in range(options.processes):
            job = _job(options, index)
            log = path / f"recorder-{index}.log"
            recorders.append(RecorderProcess(index, job, environment, log))
        _wait_until_ready(recorders)

        def snapshot() -> Snapshot:
            calls = sum(recorder.calls for recorder in recorders)
            errors = sum(recorder.errors for recorder in recorders)
            return Snapshot(calls - errors, None, errors)

        with ProgressLine(stream, snapshot):
            for recorder in recorders:
                recorder.go()

            deadline = time.monotonic() + _time_allowed(options)
            results = [recorder.finish(deadline) for recorder in recorders]
            # The processes time their own recording: their start-up and
            # exit are no part of the rate.
            elapsed = max(float(result["elapsed_seconds"]) for result in results)

        # The processes have exited: fold their files as the arbiter folds an
        # exited worker's, so that the check covers the fold too.
        for recorder in recorders:
            fold_dead_worker(multiproc_dir, recorder.process.pid)
    finally:
        for recorder in recorders:
            recorder.stop()

    return results, elapsed


def _job(options: Options, index: int) -> Job:
    calls = options.requests
    return Job(
        providers=options.providers,
        threads=options.threads,
        calls=None if calls is None else share(calls, options.processes, index),
        duration_seconds=options.duration_seconds,
        seed=1000 * (index + 1),
    )


def _wait_until_ready(recorders: list[RecorderProcess]) -> None:
    deadline = time.monotonic() + _READY_SECONDS
    for recorder in recorders:
        while not recorder.ready.wait(timeout=0.1):
            if recorder.process.poll() is not None or time.monotonic() > deadline:
                raise SetupError(
                    f"Recording process {recorder.index} did not start; its error "
                    f"output ends with:\n{recorder.log_tail()}"
                )

    logger.info("Recording processes ready (processes: %s)", len(recorders))


def _time_allowed(options: Options) -> float:
    if options.duration_seconds is not None:
        return options.duration_seconds + _SLACK_SECONDS

    return _SLACK_SECONDS + (options.requests or 0) * _SECONDS_PER_CALL
