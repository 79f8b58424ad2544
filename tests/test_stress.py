"""The stress tool against real services: it passes them, and it catches loss."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import time

import pytest

from service.stress import main
from service.stress.latency import LatencyHistogram
from service.stress.report import RunResult
from service.stress.tally import Tally
from service.stress.verdict import compare
from tests.support import ROOT, start_service, value

TOOL = [sys.executable, "-m", "service.stress"]
PROVIDERS = ("groq", "gemini", "openai")


def run_tool(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run ``python -m service.stress`` with ``args``; return the finished process."""
    return subprocess.run(
        [*TOOL, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_report(completed) -> dict:
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, completed.stdout + completed.stderr
    return json.loads(lines[0])


def calls_counted(service, **headers) -> float:
    samples = service.scrape(headers=headers)
    return sum(
        value(samples, "llm_tokens_consumed_count", provider=provider, type="input")
        for provider in PROVIDERS
    )


def test_self_started_run_with_recycled_and_killed_workers_loses_nothing(tmp_path):
    completed = run_tool(
        "--workers", "3", "--clients", "8", "--requests", "600", "--batch", "5",
        "--max-requests", "40", "--kill-worker", "--json",
        env={"TMPDIR": str(tmp_path)},
    )  # fmt: skip

    report = json_report(completed)
    assert completed.returncode == 0, report
    assert completed.stderr == ""
    assert report["passed"] is True
    assert report["lost"] == 0
    assert report["double_counted"] == 0
    assert report["errors"] == 0
    assert report["acknowledged_requests"] == 600
    assert report["sent_calls"] == report["recorded_calls"] >= 600
    assert isinstance(report["killed_worker_pid"], int)
    assert report["worker_boots"] - report["workers"] >= 8, "too few recycles"
    assert report["p50_ms"] <= report["p99_ms"]
    assert list(tmp_path.iterdir()) == [], "the service's files outlived the run"


def test_running_service_with_earlier_traffic_counts_only_the_run(tmp_path):
    tokens = {
        "LLM_METRICS_INGEST_TOKEN": "in-7c1",
        "LLM_METRICS_SCRAPE_TOKEN": "sc-9d2",
    }
    service = start_service(tmp_path, env=tokens, workers=2)
    ingest = {"Authorization": "Bearer in-7c1"}
    scrape = {"Authorization": "Bearer sc-9d2"}

    try:
        earlier = [{"provider": "groq", "input_tokens": 5, "output_tokens": 7}] * 30
        assert service.post(earlier, headers=ingest).status_code == 200
        completed = run_tool(
            "--url", service.url + "/", "--duration", "1.5", "--clients", "4",
            "--json",
            env=tokens,
        )  # fmt: skip
        final_calls = calls_counted(service, **scrape)
    finally:
        service.stop()

    report = json_report(completed)
    assert completed.returncode == 0, report
    assert completed.stderr == ""
    assert report["recorded_calls"] == report["sent_calls"] > 0
    assert report["lost"] == report["double_counted"] == report["errors"] == 0
    assert final_calls == 30 + report["sent_calls"]


@pytest.mark.parametrize(
    ("tokens", "named"),
    [
        ({}, "--scrape-token"),
        ({"LLM_METRICS_SCRAPE_TOKEN": "sc-9d2"}, "--ingest-token"),
    ],
)
def test_running_service_without_its_token_exits_2_naming_it(tmp_path, tokens, named):
    required = {
        "LLM_METRICS_INGEST_TOKEN": "in-7c1",
        "LLM_METRICS_SCRAPE_TOKEN": "sc-9d2",
    }
    service = start_service(tmp_path, env=required, workers=1)

    try:
        completed = run_tool("--url", service.url, "--requests", "20", env=tokens)
        final_calls = calls_counted(service, Authorization="Bearer sc-9d2")
    finally:
        service.stop()

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert named in completed.stderr
    assert "HTTP 401" in completed.stderr
    assert final_calls == 0


def test_process_mode_counts_every_record_tokens_call():
    completed = run_tool(
        "--mode", "processes", "--processes", "3", "--threads", "4",
        "--requests", "3000", "--providers", "groq,openai", "--json",
    )  # fmt: skip

    report = json_report(completed)
    assert completed.returncode == 0, report
    assert report["sent_calls"] == report["recorded_calls"] == 3000
    assert report["lost"] == report["double_counted"] == report["errors"] == 0
    assert report["mismatched_series"] == []


def test_service_that_drops_every_other_call_is_reported_lost_with_exit_1(tmp_path):
    service = start_service(tmp_path, "tests.lossy_app:every_other_call()", workers=1)

    try:
        completed = run_tool(
            "--url", service.url, "--clients", "4", "--requests", "150",
            "--batch", "5",
        )  # fmt: skip
    finally:
        service.stop()

    report = dict(re.findall(r"^(\w[\w ]*):\s+(.*)$", completed.stdout, re.MULTILINE))
    sent = int(re.match(r"([\d,]+) calls", report["Sent"])[1].replace(",", ""))
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert sent > 150
    assert report["Lost"] == f"{sent // 2:,}"
    assert report["Counted twice"] == "0"
    assert report["Verdict"].startswith(f"FAIL: {sent // 2:,} calls lost")


def test_service_that_records_every_call_twice_is_reported_with_exit_1(tmp_path):
    service = start_service(tmp_path, "tests.lossy_app:every_call_twice()", workers=2)

    try:
        completed = run_tool(
            "--url", service.url, "--clients", "4", "--requests", "100", "--json"
        )  # fmt: skip
    finally:
        service.stop()

    report = json_report(completed)
    assert completed.returncode == 1, report
    assert report["passed"] is False
    assert report["lost"] == 0
    assert report["double_counted"] == report["sent_calls"] > 100
    assert report["recorded_calls"] == 2 * report["sent_calls"]
    assert "counted twice" in report["verdict"]


def test_failed_requests_fail_the_run_though_nothing_is_lost(tmp_path):
    """Calls of a 500 may have been recorded: the run cannot pass, nor cry loss."""
    service = start_service(
        tmp_path, "tests.lossy_app:every_fifth_request_fails()", workers=1
    )

    try:
        completed = run_tool(
            "--url", service.url, "--clients", "2", "--requests", "50", "--json"
        )  # fmt: skip
    finally:
        service.stop()

    report = json_report(completed)
    assert completed.returncode == 1, report
    assert report["errors"] == 10
    assert report["acknowledged_requests"] == 40
    assert report["lost"] == report["double_counted"] == 0
    assert (
        report["recorded_calls"] == report["sent_calls"] + report["unconfirmed_calls"]
    )
    assert list(report["error_reasons"]) == [
        "HTTP 500: The service failed to handle the request"
    ]
    assert report["verdict"].startswith("FAIL: 10 requests failed")


def test_unreachable_url_exits_2_with_a_sentence(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    status = main(["--url", f"http://127.0.0.1:{port}", "--requests", "10"])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert f"Cannot reach the service at http://127.0.0.1:{port}" in captured.err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--url", "http://127.0.0.1:9", "--kill-worker"], "--kill-worker applies"),
        (["--url", "http://127.0.0.1:9", "--workers", "2"], "--workers applies"),
        (["--mode", "processes", "--clients", "3"], "--clients applies only"),
        (["--threads", "3"], "--threads applies only to --mode processes"),
        (["--requests", "5", "--duration", "1"], "not both"),
        (["--batch", "1001"], "--batch must be from 1 to 1,000, got 1001"),
        (["--providers", "groq,Bad"], "got 'Bad'"),
        (["--url", "localhost:8000"], "--url must be an http:// or https:// URL"),
    ],
)
def test_bad_arguments_exit_2_with_a_sentence(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_progress_line_appears_on_a_terminal(tmp_path):
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*TOOL, "--mode", "processes", "--processes", "1", "--threads", "1",
             "--duration", "1.2"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )  # fmt: skip
        os.close(terminal)
        shown = _read_terminal(controller, deadline=time.monotonic() + 60)
        stdout, _ = process.communicate(timeout=60)
    finally:
        os.close(controller)

    assert process.returncode == 0, stdout
    assert re.search(r"sent [\d,]+ calls \| [\d,]+ calls/s \| errors 0 \|", shown)
    assert "| errors" not in stdout
    assert stdout.startswith("Target:")


def _read_terminal(descriptor: int, deadline: float) -> str:
    chunks = []
    while time.monotonic() < deadline:
        try:
            chunk = os.read(descriptor, 4096)
        except OSError:  # EIO: the tool closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_scrape_of_a_non_metrics_endpoint_exits_2(tmp_path):
    service = start_service(tmp_path, workers=1)

    try:
        completed = run_tool("--url", service.url + "/healthz", "--requests", "5")
    finally:
        service.stop()

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert "/healthz/metrics answered HTTP 404" in completed.stderr


def test_compare_with_swapped_token_counts_fails_on_the_differing_series():
    sent, counted = Tally(), Tally()
    sent.add_call("groq", 812, 97)
    counted.add_call("groq", 97, 812)

    comparison = compare(sent, counted, Tally())
    result = RunResult("http", "a test", 1, 0, comparison, 1.0, LatencyHistogram())

    assert comparison.lost_calls == comparison.double_counted_calls == 0
    assert {(m.sample, m.token_type) for m in comparison.mismatches} == {
        (sample, token_type)
        for sample in ("llm_tokens_total", "llm_tokens_consumed_sum")
        for token_type in ("input", "output")
    }
    assert result.verdict() == "FAIL: 4 series differ."


def test_latency_percentiles_stay_within_one_percent():
    histogram = LatencyHistogram()
    for millisecond in range(1, 1001):
        histogram.add(millisecond / 1000)

    assert 500 <= histogram.percentile_ms(0.50) <= 505
    assert 990 <= histogram.percentile_ms(0.99) <= 999.9
    assert LatencyHistogram().percentile_ms(0.5) is None
