"""Start Gunicorn on a free loopback port and load it with wrk."""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def gunicorn(*args: str, workers: int = 2) -> Iterator[str]:
    """Run ``gunicorn -c gunicorn.conf.py`` with its own directory; yield its URL."""
    # Memory-backed, as gunicorn.conf.py chooses when it makes the directory.
    workdir = Path(tempfile.mkdtemp(prefix="bench-gunicorn-", dir="/dev/shm"))
    log = workdir / "gunicorn.log"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "multiproc")}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "--bind",
        "127.0.0.1:0",
        "--workers",
        str(workers),
        "--error-logfile",
        str(log),
        *args,
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        yield _wait_for_url(process, log, workers)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_url(process: subprocess.Popen[bytes], log: Path, workers: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        match = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", text)
        if match and text.count("Booting worker") >= workers:
            time.sleep(0.5)
            return match[1]
        if process.poll() is not None:
            raise RuntimeError(f"Gunicorn exited:\n{text}")
        time.sleep(0.05)
    raise RuntimeError("Gunicorn did not start within 30 seconds")


def wrk_requests_per_second(
    url: str, body: str, seconds: int, connections: int = 8
) -> float:
    """POST ``body`` to ``url`` with wrk; return requests per second without errors."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")

    script = Path(tempfile.mkdtemp(prefix="bench-wrk-")) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body}]==]\n"
    )
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    failed = "Non-2xx" in result.stdout or "Socket errors" in result.stdout
    if failed or result.stderr.strip():
        raise RuntimeError(f"wrk failed:\n{result.stdout}{result.stderr}")

    return float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)[1])  # type: ignore[index]


def median(values: list[float]) -> float:
    return statistics.median(values)
