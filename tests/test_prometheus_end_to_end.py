"""A real Prometheus, with the shipped rules, scrapes a real Gunicorn service.

The service records known traffic; Prometheus scrapes it every second and
evaluates the rule files of ``config/rules`` every second. The tests then ask
Prometheus, over its HTTP API, what an operator's dashboard and alerts would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import (
    ROOT,
    Service,
    expected_totals,
    readme_section,
    start_service,
    stop_process,
    write_config,
)

pytestmark = pytest.mark.prometheus

RULES_DIR = ROOT / "config" / "rules"
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "llm-token-metrics.json"
JOB = "llm-token-metrics"

# Tiny limits, so that a handful of calls crosses the alert thresholds.
# openai has no limit, so it must have no quota series.
CONFIG = """
[providers.groq]
rpm = 2
tpm = 100000

[providers.gemini]
rpd = 1000
tpm = 250000
tpm_counts = "input"

[providers.openai]
"""

CALLS = [
    ("groq", 812, 97),
    ("groq", 99, 100),
    ("groq", 4999, 1500),
    ("groq", 12_000, 3),
    ("gemini", 100, 101),
    ("gemini", 10_000, 10_001),
    ("gemini", 2500, 700),
    ("openai", 0, 7),
    ("openai", 501, 999),
    ("openai", 250_000, 42),
]
PROVIDERS = {"groq", "gemini", "openai"}
LIMITS = {("groq", "rpm"), ("groq", "tpm"), ("gemini", "rpd"), ("gemini", "tpm")}

# What Grafana would put in the dashboard's queries, for a 1-second scrape.
GRAFANA_VARIABLES = {
    "__rate_interval": "5s",
    "__interval": "5s",
    "__range": "10m",
}
PROVIDER_SELECTIONS = {"All": ".*", "two providers": "(gemini|groq)"}

DEADLINE_SECONDS = 20


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (apt install prometheus)")
    return binary


@dataclass
class Prometheus:
    """A Prometheus server started for the tests, on a free loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    session: requests.Session = field(default_factory=requests.Session)

    def api(self, path: str, **params: Any) -> Any:
        """Call the HTTP API and return its ``data``; fail on any error."""
        response = self.session.get(
            f"{self.url}/api/v1/{path}", params=params, timeout=10
        )
        body = response.json()
        assert response.status_code == 200, (path, params, body)
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def values(self, expr: str, *label_names: str) -> dict[tuple[str, ...], float]:
        """Return an instant query's result keyed by the given labels."""
        return {
            tuple(sample["metric"].get(name, "") for name in label_names): float(
                sample["value"][1]
            )
            for sample in self.query(expr)
        }

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [
            alert
            for alert in self.api("alerts")["alerts"]
            if alert["labels"]["alertname"] == name
        ]

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        stop_process(self.process)
        self.session.close()


def start_prometheus(directory: Path, target_url: str) -> Prometheus:
    """Start Prometheus scraping ``target_url`` with the shipped rule files."""
    binary = _prometheus_binary()
    target = target_url.removeprefix("http://")
    config_path = directory / "prometheus.yml"
    config_path.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "rule_files:\n"
        f"  - {RULES_DIR / '*.yml'}\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )

    # The port is free when chosen but could be taken before Prometheus binds
    # it, so try again with another one if that happens.
    for _attempt in range(3):
        port = _free_port()
        log_path = directory / f"prometheus-{port}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        prometheus = Prometheus(process, f"http://127.0.0.1:{port}", log_path)
        if _wait_for_ready(prometheus):
            return prometheus

        prometheus.stop()
        if "address already in use" not in prometheus.log():
            break

    raise RuntimeError(f"Prometheus did not start:\n{prometheus.log()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_ready(prometheus: Prometheus) -> bool:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline and prometheus.process.poll() is None:
        try:
            if prometheus.session.get(f"{prometheus.url}/-/ready", timeout=2).ok:
                return True
        except requests.ConnectionError:
            pass
        time.sleep(0.1)

    return False


def wait_for(description: str, check: Callable[[], Any]) -> Any:
    """Poll ``check`` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(
                f"Timed out after {DEADLINE_SECONDS} s waiting for {description}"
            )
        time.sleep(0.2)


def _post(service: Service, calls: list[tuple[str, int, int]], as_array: bool) -> None:
    items = [
        {"provider": provider, "input_tokens": tokens_in, "output_tokens": tokens_out}
        for provider, tokens_in, tokens_out in calls
    ]
    payloads = [items] if as_array else items
    for payload in payloads:
        response = service.post(payload)
        assert response.status_code == 200, response.text


def _scrape_time(prometheus: Prometheus) -> float:
    """Return when the latest scrape of the service started, if it succeeded."""
    selector = f'up{{job="{JOB}"}}'
    if prometheus.values(selector) != {(): 1.0}:
        return 0.0

    return prometheus.values(f"timestamp({selector})").get((), 0.0)


def _wait_for_scrape_after(prometheus: Prometheus, moment: float) -> float:
    """Wait for a successful scrape that started after ``moment``; return its time."""

    def scraped_after() -> float:
        scraped_at = _scrape_time(prometheus)
        return scraped_at if scraped_at > moment else 0.0

    return wait_for("a scrape of the service", scraped_after)


def _record_traffic(service: Service, prometheus: Prometheus) -> None:
    """Send the test calls after a first scrape, and wait for them to be scraped."""
    # The service shows every configured provider's series at zero from the
    # first scrape on, so increase() must count every call sent after it.
    _wait_for_scrape_after(prometheus, time.time())

    _post(service, CALLS[:4], as_array=False)
    _post(service, CALLS[4:], as_array=True)
    first_after = _wait_for_scrape_after(prometheus, time.time())

    # Prometheus scrapes a target one scrape at a time, storing each before
    # it starts the next: rules evaluated once the next scrape has started
    # have seen all of the traffic.
    next_after = _wait_for_scrape_after(prometheus, first_after)
    wait_for(
        "the recording rules to evaluate after the traffic",
        lambda: (
            prometheus.values(
                "min(timestamp(provider_type:llm_tokens:increase1h))"
            ).get((), 0)
            >= next_after
        ),
    )


@contextlib.contextmanager
def _without_service_variables() -> Iterator[None]:
    """Hide the variables the service reads, as conftest does for each test."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(
                ("LLM_METRICS_", "PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY")
            ):
                patch.delenv(name)
        yield


@contextlib.contextmanager
def _running_stack(directory: Path) -> Iterator[tuple[Service, Prometheus]]:
    """Run the service and a Prometheus that scrapes it; stop both on exit."""
    _prometheus_binary()
    with _without_service_variables():
        service = start_service(
            directory, config=write_config(directory, body=CONFIG), workers=2
        )

    try:
        prometheus = start_prometheus(directory, service.url)
        try:
            wait_for(
                "the service to be up in Prometheus", lambda: _scrape_time(prometheus)
            )
            yield service, prometheus
        finally:
            prometheus.stop()
    finally:
        service.stop()


@dataclass
class Stack:
    """The service with the test traffic recorded, and Prometheus scraping it."""

    service: Service
    prometheus: Prometheus
    started_at: float


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    started_at = time.time()
    directory = tmp_path_factory.mktemp("prometheus-end-to-end")
    with _running_stack(directory) as (service, prometheus):
        _record_traffic(service, prometheus)
        yield Stack(service, prometheus, started_at)


def test_scraped_token_totals_after_known_traffic_equal_what_was_sent(stack):
    expected = {key: entry["total"] for key, entry in expected_totals(CALLS).items()}

    totals = stack.prometheus.values("llm_tokens_total", "provider", "type")

    assert totals == expected


def test_scraped_token_histogram_after_known_traffic_puts_calls_in_their_buckets(
    stack,
):
    expected = {}
    for (provider, kind), entry in expected_totals(CALLS).items():
        expected[("count", provider, kind, "")] = entry["count"]
        expected[("sum", provider, kind, "")] = entry["total"]
        expected[("bucket", provider, kind, "+Inf")] = entry["count"]
        for bound in (100, 500, 1000, 2000, 5000, 10000):
            le = f"{float(bound)}"
            expected[("bucket", provider, kind, le)] = entry[f"le={le}"]

    scraped = {}
    for suffix in ("count", "sum", "bucket"):
        series = stack.prometheus.values(
            f"llm_tokens_consumed_{suffix}", "provider", "type", "le"
        )
        scraped.update({(suffix, *key): number for key, number in series.items()})

    assert scraped == expected


@pytest.mark.parametrize(
    "rule",
    ["provider_type:llm_tokens:increase1h", "provider_type:llm_tokens:increase1d"],
)
def test_token_recording_rule_after_known_traffic_counts_it_per_provider_and_type(
    stack, rule
):
    sent = {key: entry["total"] for key, entry in expected_totals(CALLS).items()}

    recorded = stack.prometheus.values(rule, "provider", "type")

    # increase() starts from the zero sample of each series and extrapolates
    # towards the window's edges, so it may add a little, never miss a call.
    assert set(recorded) == set(sent)
    for key, tokens in recorded.items():
        assert sent[key] <= tokens <= 2 * sent[key], (key, tokens)


def test_quota_recording_rule_after_known_traffic_sums_every_configured_limit(stack):
    exported = {
        (dict(labels)["provider"], dict(labels)["quota_type"])
        for name, labels in stack.service.scrape()
        if name == "llm_quota_usage_percent"
    }

    raw = stack.prometheus.values("llm_quota_usage_percent", "provider", "quota_type")
    recorded = stack.prometheus.values(
        "provider_quota_type:llm_quota_usage_percent:sum", "provider", "quota_type"
    )

    # Every groq call was in the last minute, against a limit of 2 per minute.
    groq_calls = sum(1 for provider, _, _ in CALLS if provider == "groq")
    assert exported == LIMITS
    assert set(raw) == LIMITS
    assert set(recorded) == LIMITS
    assert recorded[("groq", "rpm")] == groq_calls / 2 * 100


def test_quota_alert_past_the_limit_is_raised_for_that_provider_and_quota(stack):
    def exhausted() -> list[tuple[str, str]]:
        return sorted(
            (alert["labels"]["provider"], alert["labels"]["quota_type"])
            for alert in stack.prometheus.alerts("LLMQuotaExhausted")
        )

    alerts = wait_for("LLMQuotaExhausted", exhausted)

    # groq's rpm is the only quota past 100%; the alert waits 1 minute
    # before firing, longer than this test runs.
    assert alerts == [("groq", "rpm")]
    assert stack.prometheus.alerts("LLMQuotaExhausted")[0]["state"] == "pending"


def test_shipped_rule_files_in_prometheus_evaluate_without_errors(stack):
    shipped_files = {str(path) for path in RULES_DIR.glob("*.yml")}

    def evaluated_groups():
        groups = stack.prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return groups if all(rule["health"] != "unknown" for rule in rules) else None

    groups = wait_for("every rule to be evaluated", evaluated_groups)

    assert {group["file"] for group in groups} == shipped_files
    rules = [rule for group in groups for rule in group["rules"]]
    assert [rule for rule in rules if rule["health"] != "ok"] == []
    assert {rule["type"] for rule in rules} == {"recording", "alerting"}
    for rule in rules:
        if rule["type"] == "alerting":
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule
            assert set(rule["annotations"]) >= {"summary", "description"}, rule


def _operating_docs() -> str:
    return readme_section("Operating it")


def test_promql_in_the_operating_docs_evaluates_on_the_recorded_traffic(stack):
    blocks = re.findall(r"^```promql\n(.*?)^```", _operating_docs(), re.M | re.S)
    queries = [line for block in blocks for line in block.splitlines() if line]

    results = {query: stack.prometheus.query(query) for query in queries}

    assert len(queries) >= 8
    for query, result in results.items():
        if "== 0" not in query:
            assert result, f"no data for {query}"


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _dashboard_queries() -> list[str]:
    return [
        target["expr"]
        for panel in _dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def _substitute(expr: str, provider: str) -> str:
    """Replace Grafana's variables as Grafana would; fail on an unknown one."""
    variables = {**GRAFANA_VARIABLES, "provider": provider}

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in variables, f"unknown variable ${name} in {expr}"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


@pytest.mark.parametrize("selection", sorted(PROVIDER_SELECTIONS))
def test_dashboard_queries_with_variables_substituted_evaluate_without_error(
    stack, selection
):
    queries = _dashboard_queries()
    now = time.time()

    results = {}
    for expr in queries:
        query = _substitute(expr, PROVIDER_SELECTIONS[selection])
        instant = stack.prometheus.query(query)
        ranged = stack.prometheus.api(
            "query_range", query=query, start=stack.started_at, end=now, step="1s"
        )["result"]
        results[expr] = (instant, ranged)

    assert len(queries) >= 10
    for expr, (instant, ranged) in results.items():
        assert instant, f"no data for {expr}"
        assert ranged, f"no data over time for {expr}"


def test_dashboard_provider_variable_lists_every_recorded_provider(stack):
    (variable,) = [
        variable
        for variable in _dashboard()["templating"]["list"]
        if variable["name"] == "provider"
    ]
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
    assert match, variable["definition"]

    providers = stack.prometheus.api(
        f"label/{match[2]}/values", **{"match[]": match[1]}
    )

    assert set(providers) == PROVIDERS


def test_down_alert_after_the_service_stops_is_raised_for_its_instance(tmp_path):
    with _running_stack(tmp_path) as (service, prometheus):
        instance = service.url.removeprefix("http://")
        assert prometheus.alerts("LLMTokenMetricsDown") == []

        service.stop()
        alerts = wait_for(
            "LLMTokenMetricsDown", lambda: prometheus.alerts("LLMTokenMetricsDown")
        )

    assert [alert["labels"]["instance"] for alert in alerts] == [instance]
    assert alerts[0]["labels"]["severity"] == "critical"
    assert alerts[0]["state"] == "pending"
