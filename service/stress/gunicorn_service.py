"""A Gunicorn service that the tool starts, watches and stops on its own.

It runs the project's ``gunicorn.conf.py`` on a free loopback port, with its
own temporary multiprocess directory and a config listing the providers of
the run, so that nothing else records to it and nothing of it outlives the
run.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from service.stress.errors import SetupError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
GUNICORN_CONFIG = ROOT / "gunicorn.conf.py"

_LISTENING = re.compile(r"Listening at: (http://127\.0\.0\.1:\d+)")
_START_SECONDS = 30.0
_STOP_SECONDS = 30.0
_POLL_SECONDS = 0.05
# The tool passes its own settings; the operator's must not reach the service.
_PRIVATE_VARIABLES = ("LLM_METRICS_", "PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY")


class GunicornService:
    """Start Gunicorn with ``workers`` workers on entry, stop it on exit."""

    def __init__(
        self, workers: int, max_requests: int | None, providers: Sequence[str]
    ):
        self.workers = workers
        self.max_requests = max_requests
        self.providers = tuple(providers)
        self.url = ""
        self._directory = tempfile.TemporaryDirectory(prefix="llm-token-stress-")
        self.path = Path(self._directory.name)
        self.multiproc_dir = self.path / "multiproc"
        self.log_path = self.path / "gunicorn.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GunicornService:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the arbiter and wait until every worker answers."""
        if not GUNICORN_CONFIG.is_file():
            raise SetupError(
                f"Cannot start a service: {GUNICORN_CONFIG} does not exist; "
                "run the tool from a checkout of the project, or pass --url."
            )

        self.multiproc_dir.mkdir()
        # Gunicorn logs to its error log; anything else it prints goes to a
        # file too, so that the tool's own output holds the report alone.
        with (self.path / "gunicorn-output.log").open("wb") as output:
            self._process = subprocess.Popen(
                self._command(),
                cwd=ROOT,
                env=self._environment(),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        logger.info("Gunicorn started (workers: %s, pid: %s)", self.workers, self.pid)

        self.url = self._wait_for_listening()
        self._wait_for_workers()
        logger.info("Service ready (url: %s)", self.url)

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("The service has not been started.")

        return self._process.pid

    def worker_pids(self) -> list[int]:
        """Return the pids of the arbiter's live (or not yet reaped) workers."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []

    def worker_boots(self) -> int:
        """Return how many workers booted so far, replacements included."""
        return self._log().count("Booting worker")

    def kill_worker(self) -> int:
        """SIGKILL a recording worker, wait for its replacement; return its pid."""
        for _ in range(5):
            pid = self._victim()
            if self._kill(pid):
                return pid

        raise SetupError("Found no worker to kill: each one exited first.")

    def stop(self) -> None:
        """Stop the arbiter with SIGTERM (SIGKILL if it hangs), remove the files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                logger.error(
                    "Gunicorn ignored SIGTERM, killing it (pid: %s)", process.pid
                )
                process.kill()
                process.wait()

        self._directory.cleanup()

    def _command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(GUNICORN_CONFIG),
            "--bind",
            "127.0.0.1:0",
            "--workers",
            str(self.workers),
            "--error-logfile",
            str(self.log_path),
        ]
        if self.max_requests is not None:
            command += ["--max-requests", str(self.max_requests)]

        return command

    def _environment(self) -> dict[str, str]:
        config_path = self.path / "service.toml"
        config_path.write_text(service_config(self.providers))

        environment = private_variables_removed(os.environ)
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(self.multiproc_dir)
        environment["LLM_METRICS_CONFIG"] = str(config_path)
        return environment

    def _wait_for_listening(self) -> str:
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            self._check_running()
            match = _LISTENING.search(self._log())
            if match:
                return match[1]

            time.sleep(_POLL_SECONDS)

        raise SetupError(
            f"Gunicorn did not listen within {_START_SECONDS:.0f} seconds; "
            f"its log ends with:\n{self._log_tail()}"
        )

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            self._check_running()
            if len(self.worker_pids()) >= self.workers and self._healthy():
                return

            time.sleep(_POLL_SECONDS)

        raise SetupError(
            f"Gunicorn's {self.workers} workers did not boot within "
            f"{_START_SECONDS:.0f} seconds; its log ends with:\n{self._log_tail()}"
        )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                status: int = response.status
        except (urllib.error.URLError, OSError):
            return False

        return status == 200

    def _check_running(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise SetupError(
                f"Gunicorn exited with status {self._process.returncode} while "
                f"starting; its log ends with:\n{self._log_tail()}"
            )

    def _victim(self) -> int:
        """Pick a worker whose metric files hold values, so that killing it matters."""
        pids = self.worker_pids()
        if not pids:
            raise SetupError(
                f"Cannot list the workers of pid {self.pid}: --kill-worker needs "
                "Linux's /proc/<pid>/task/<pid>/children."
            )

        recorded = [
            pid for pid in pids if (self.multiproc_dir / f"counter_{pid}.db").exists()
        ]
        return (recorded or pids)[0]

    def _kill(self, pid: int) -> bool:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False  # it exited on its own, recycled; the caller picks another

        logger.info("Worker killed (signal: SIGKILL, pid: %s)", pid)
        self._wait(lambda: pid not in self.worker_pids(), "the killed worker")
        self._wait(lambda: len(self.worker_pids()) >= self.workers, "a new worker")
        return True

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                logger.warning("Gave up waiting for %s (pid: %s)", what, self.pid)
                return

            time.sleep(_POLL_SECONDS)

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 15) -> str:
        return "\n".join(self._log().splitlines()[-lines:]) or "(an empty log)"


def private_variables_removed(environ: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``environ`` without the variables the service reads."""
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(_PRIVATE_VARIABLES)
    }


def service_config(providers: Sequence[str]) -> str:
    """Return a service config that lists ``providers``, with no quota limits."""
    tables = "".join(f'\n[providers."{name}"]\n' for name in providers)
    return "[service]\nallow_unknown_providers = false\n" + tables
