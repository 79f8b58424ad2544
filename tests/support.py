"""Helpers shared by the tests: a real Gunicorn service and metric parsing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]

TEST_CONFIG = """
[service]
max_tokens_per_call = 10_000_000
{service_extra}

[providers.groq]
rpm = 30
rpd = 14400
tpm = 6000

[providers.gemini]
rpm = 10
rpd = 500
tpm = 250000
tpm_counts = "input"

[providers.openai]
"""


def write_config(
    directory: Path, service_extra: str = "", body: str | None = None
) -> Path:
    """Write a service config into ``directory`` and return its path."""
    path = directory / "service.toml"
    path.write_text(
        body if body is not None else TEST_CONFIG.format(service_extra=service_extra)
    )
    return path


@dataclass
class Service:
    """A Gunicorn arbiter started for one test, on a free loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    multiproc_dir: Path
    log_path: Path
    session: requests.Session = field(default_factory=requests.Session)

    def post(self, payload: object, **kwargs: object) -> requests.Response:
        return self.session.post(
            f"{self.url}/v1/usage", json=payload, timeout=10, **kwargs
        )

    def scrape(self, **kwargs: object) -> Samples:
        response = self.session.get(f"{self.url}/metrics", timeout=10, **kwargs)
        assert response.status_code == 200, response.text
        return parse_samples(response.text)

    def worker_pids(self) -> list[int]:
        """Return the pids of the arbiter's live worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        stop_process(self.process)
        self.session.close()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a server with SIGTERM, and SIGKILL if it has not exited in 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_service(
    tmp_path: Path,
    *args: str,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    workers: int = 4,
) -> Service:
    """Start Gunicorn with the project's config file and wait until it answers."""
    multiproc_dir = tmp_path / "multiproc"
    log_path = tmp_path / "gunicorn.log"
    full_env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        "LLM_METRICS_CONFIG": str(config or write_config(tmp_path)),
        **(env or {}),
    }
    command = [
        *GUNICORN,
        "--bind",
        "127.0.0.1:0",
        "--workers",
        str(workers),
        "--error-logfile",
        str(log_path),
        *args,
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=full_env)

    url = _wait_for_listen(process, log_path)
    service = Service(process, url, multiproc_dir, log_path)
    _wait_for_workers(service, workers)
    return service


def _wait_for_listen(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text() if log_path.exists() else ""
            raise RuntimeError(f"Gunicorn exited with {process.returncode}:\n{log}")
        if log_path.exists():
            match = re.search(
                r"Listening at: (http://127\.0\.0\.1:\d+)", log_path.read_text()
            )
            if match:
                return match[1]
        time.sleep(0.05)

    process.kill()
    raise RuntimeError("Gunicorn did not start listening within 20 seconds")


def _wait_for_workers(service: Service, workers: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        booted = service.log().count("Booting worker")
        if booted >= workers:
            try:
                if service.session.get(f"{service.url}/healthz", timeout=5).ok:
                    return
            except requests.ConnectionError:
                pass
        time.sleep(0.05)

    service.stop()
    raise RuntimeError(f"Gunicorn workers did not boot:\n{service.log()}")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Parse Prometheus text into {(sample name, sorted labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value, 0 when the series does not exist yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def expected_totals(
    calls: list[tuple[str, int, int]],
) -> dict[tuple[str, str], dict[str, float]]:
    """Compute the counter, histogram count, sum and buckets that calls must produce."""
    from service.metrics import TOKEN_BUCKETS

    totals: dict[tuple[str, str], dict[str, float]] = defaultdict(
        lambda: defaultdict(float)
    )
    for provider, input_tokens, output_tokens in calls:
        for kind, tokens in (("input", input_tokens), ("output", output_tokens)):
            entry = totals[(provider, kind)]
            entry["total"] += tokens
            entry["count"] += 1
            for bound in TOKEN_BUCKETS:
                if tokens <= bound:
                    entry[f"le={float(bound)}"] += 1
    return totals


def assert_totals(samples: Samples, calls: list[tuple[str, int, int]]) -> None:
    """Assert that a scrape holds exactly the totals of ``calls``."""
    for (provider, kind), entry in expected_totals(calls).items():
        labels = {"provider": provider, "type": kind}
        assert value(samples, "llm_tokens_total", **labels) == entry["total"]
        assert value(samples, "llm_tokens_consumed_sum", **labels) == entry["total"]
        assert value(samples, "llm_tokens_consumed_count", **labels) == entry["count"]
        assert (
            value(samples, "llm_tokens_consumed_bucket", le="+Inf", **labels)
            == entry["count"]
        )
        for bound in (100, 500, 1000, 2000, 5000, 10000):
            got = value(
                samples, "llm_tokens_consumed_bucket", le=f"{float(bound)}", **labels
            )
            assert got == entry[f"le={float(bound)}"], (provider, kind, bound)


def writer_pids(directory: Path, prefix: str) -> set[int]:
    """Return the pids of the workers that have files ``<prefix><pid>.*``, archives aside."""
    pids = set()
    for name in os.listdir(directory):
        stem = name.split(".")[0]
        if stem.startswith(prefix) and stem[len(prefix) :].isdigit():
            pids.add(int(stem[len(prefix) :]))
    return pids


def readme_section(title: str) -> str:
    """Return the text of one ``## title`` section of the README."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if match is None:
        raise AssertionError(f"README.md has no section {title!r}")
    return match[1]


def run_python_json(script: str, env: dict[str, str]) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter from the project root; parse its JSON."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report
