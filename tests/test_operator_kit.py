"""The operator kit: Prometheus config, rules, Grafana dashboard and Dockerfile.

promtool checks the Prometheus files and runs their unit tests. No container
engine runs here, so the Dockerfile is read instruction by instruction, and
its command is run as the image would run it: the package installed apart
from the files copied into the working directory, with the image's
environment, on a loopback port.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, readme_section, stop_process

CONFIG_DIR = ROOT / "config"
PROMETHEUS_CONFIG = CONFIG_DIR / "prometheus.yml"
RULE_FILES = sorted((CONFIG_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((CONFIG_DIR / "rules" / "tests").glob("*.yml"))
DASHBOARD = CONFIG_DIR / "grafana" / "dashboards" / "llm-token-metrics.json"
GRAFANA_PROVISIONING = CONFIG_DIR / "grafana" / "provisioning"
DOCKERFILE = ROOT / "Dockerfile"


def _packages() -> list[str]:
    """Return the packages that pip installs from pyproject.toml."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"].get("packages")
    if isinstance(packages, list):
        return packages

    # Automatic discovery finds service/ and every package inside it.
    return sorted(
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "service").rglob("__init__.py")
    )


def _rules_text() -> str:
    return "\n".join(path.read_text() for path in RULE_FILES)


def _operating_docs() -> str:
    return readme_section("Operating it")


# promtool


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt install prometheus)")

    return subprocess.run(
        [promtool, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.prometheus
def test_promtool_check_config_accepts_prometheus_yml_and_finds_every_rule_file():
    result = _promtool("check", "config", PROMETHEUS_CONFIG)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout
    for path in RULE_FILES:
        assert f"Checking {path}" in result.stdout


@pytest.mark.prometheus
def test_promtool_check_rules_accepts_every_rule_file():
    result = _promtool("check", "rules", *RULE_FILES)

    assert len(RULE_FILES) >= 2
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_of_rules_and_alerts_pass():
    result = _promtool("test", "rules", *RULE_TESTS)

    assert len(RULE_TESTS) >= 2
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


@pytest.mark.prometheus
def test_promtool_unit_tests_with_the_warning_threshold_moved_fail(tmp_path):
    """The unit tests pin the thresholds: 80% exactly must still warn."""
    (tmp_path / "tests").mkdir()
    for path in RULE_FILES:
        text = path.read_text().replace(">= 80", "> 80")
        (tmp_path / path.name).write_text(text)
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)

    result = _promtool("test", "rules", *sorted((tmp_path / "tests").glob("*.yml")))

    assert result.returncode != 0
    assert "quota usage at exactly 80 percent warns" in result.stdout + result.stderr


def test_promtool_unit_tests_name_every_recording_rule_and_alert():
    rules = _rules_text()
    tests = "\n".join(path.read_text() for path in RULE_TESTS)

    recorded = re.findall(r"^\s*- record: (\S+)$", rules, re.M)
    alerts = re.findall(r"^\s*- alert: (\S+)$", rules, re.M)

    assert len(recorded) == 3
    assert len(alerts) >= 3
    for name in recorded:
        assert f"expr: {name}" in tests, name
    for name in alerts:
        assert f"alertname: {name}" in tests, name


def test_scrape_job_in_prometheus_yml_is_the_job_the_alerts_watch():
    config = PROMETHEUS_CONFIG.read_text()

    jobs = re.findall(r"^\s*- job_name: (\S+)$", config, re.M)
    watched = set(re.findall(r'up\{job="([^"]+)"\}', _rules_text()))

    assert jobs == ["llm-token-metrics"]
    assert watched == set(jobs)


# Grafana


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _queries() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


def test_dashboard_panels_query_the_data_source_chosen_in_its_variable():
    dashboard = _dashboard()
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    source = {"type": "prometheus", "uid": "${datasource}"}

    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels():
        assert panel["datasource"] == source, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)) >= 1, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]


def test_dashboard_layout_has_unique_ids_and_no_overlapping_panels():
    panels = _dashboard()["panels"]
    cells: dict[tuple[int, int], str] = {}

    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]

    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))


def test_dashboard_every_query_filters_on_the_provider_variable():
    variables = {item["name"]: item for item in _dashboard()["templating"]["list"]}
    provider = variables["provider"]

    assert provider["definition"] == "label_values(llm_tokens_total, provider)"
    assert provider["multi"] is True
    assert provider["includeAll"] is True
    for expr in _queries():
        assert 'provider=~"$provider"' in expr, expr


def test_dashboard_shows_hours_days_types_buckets_and_quotas():
    queries = "\n".join(_queries())
    recorded = re.findall(r"^\s*- record: (\S+)$", _rules_text(), re.M)

    for name in recorded:
        assert name in queries, name
    assert "sum by (provider, type)" in queries
    assert "llm_tokens_consumed_bucket" in queries
    assert "histogram_quantile(" in queries
    assert {panel["type"] for panel in _panels()} >= {"heatmap", "bargauge"}


def test_dashboard_quota_panels_turn_orange_at_80_and_red_at_100_percent():
    quota_panels = [
        panel
        for panel in _panels()
        if any(
            "llm_quota_usage_percent" in target["expr"] for target in panel["targets"]
        )
    ]

    assert len(quota_panels) >= 2
    assert "bargauge" in {panel["type"] for panel in quota_panels}
    for panel in quota_panels:
        defaults = panel["fieldConfig"]["defaults"]
        steps = defaults["thresholds"]["steps"]
        assert defaults["unit"] == "percent", panel["title"]
        assert [step["value"] for step in steps] == [None, 80, 100], panel["title"]
        assert [step["color"] for step in steps] == ["green", "orange", "red"]


def test_grafana_provisioning_loads_the_dashboard_from_the_path_the_docs_name():
    dashboards = (
        GRAFANA_PROVISIONING / "dashboards" / "llm-token-metrics.yml"
    ).read_text()
    sources = (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()

    (path,) = re.findall(r"^\s*path: (\S+)$", dashboards, re.M)

    assert "type: file" in dashboards
    assert "type: prometheus" in sources
    assert path in _operating_docs()
    assert DASHBOARD.name in _operating_docs()


# Dockerfile


def _instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as (keyword, arguments) pairs."""
    logical = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    instructions = []
    for line in logical.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))

    return instructions


def _arguments(keyword: str) -> list[str]:
    return [arguments for name, arguments in _instructions() if name == keyword]


def _environment() -> dict[str, str]:
    pairs = [
        item.split("=", 1)
        for arguments in _arguments("ENV")
        for item in shlex.split(arguments)
    ]
    return dict(pairs)


def _command() -> list[str]:
    (command,) = _arguments("CMD")
    return json.loads(command)


def _healthcheck_command() -> list[str]:
    (healthcheck,) = _arguments("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert options.startswith("--"), healthcheck
    return json.loads(command)


def _workdir() -> str:
    return _arguments("WORKDIR")[-1]


def _copies() -> list[tuple[list[str], str]]:
    """Return each COPY's sources and its absolute destination directory."""
    copies, workdir = [], "/"
    for keyword, arguments in _instructions():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, arguments)
        elif keyword == "COPY":
            *sources, destination = shlex.split(arguments)
            assert not any(source.startswith("--") for source in sources), arguments
            # Every COPY here names a directory: a file source keeps its name
            # in it, a directory source has its contents copied into it.
            assert destination.endswith("/"), arguments
            directory = posixpath.normpath(posixpath.join(workdir, destination))
            copies.append((sources, directory))

    return copies


def test_dockerfile_base_is_a_slim_python_that_pyproject_accepts():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")

    (base,) = _arguments("FROM")
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", base)

    assert match, base
    assert (int(match[1]), int(match[2])) >= tuple(map(int, minimum.split(".")))


def test_dockerfile_installs_the_project_from_its_copied_source_and_nothing_else():
    top_level = {package.split(".")[0] for package in _packages()}
    build_dir = next(
        destination for sources, destination in _copies() if "pyproject.toml" in sources
    )

    installs = [
        re.search(r"pip install (.*?)(?: &&|$)", arguments)
        for arguments in _arguments("RUN")
    ]
    installs = [match[1].split() for match in installs if match]

    assert installs == [[build_dir]]
    for package in top_level:
        assert ([package], f"{build_dir}/{package}") in _copies(), package


def test_dockerfile_runs_as_a_non_root_user_who_owns_the_multiprocess_directory():
    environment = _environment()
    multiproc_dir = environment["PROMETHEUS_MULTIPROC_DIR"]
    runs = " ".join(_arguments("RUN"))
    keywords = [keyword for keyword, _ in _instructions()]

    (user,) = _arguments("USER")
    uid = user.split(":")[0]

    assert uid not in {"0", "root"}
    assert re.search(rf"useradd .*--uid {uid}\b", runs), runs
    assert f"mkdir -p {multiproc_dir}" in runs
    assert re.search(rf"chown \S+ {re.escape(multiproc_dir)}\b", runs)
    assert multiproc_dir.rstrip("/") not in {"/tmp", "/app", _workdir()}
    assert keywords.index("USER") > max(
        index for index, keyword in enumerate(keywords) if keyword == "RUN"
    )


def test_dockerfile_exposes_binds_and_health_checks_the_same_port():
    command = _command()
    bind = command[command.index("--bind") + 1]
    health = " ".join(_healthcheck_command())

    (exposed,) = _arguments("EXPOSE")
    host, port = bind.rsplit(":", 1)

    assert host == "0.0.0.0"
    assert exposed == port
    assert f"http://127.0.0.1:{port}/healthz" in health


def test_dockerfile_command_is_gunicorn_with_the_copied_gunicorn_conf():
    command = _command()
    copied_to_workdir = {
        source
        for sources, destination in _copies()
        for source in sources
        if destination == posixpath.normpath(_workdir())
    }

    assert command[:3] == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert "gunicorn.conf.py" in copied_to_workdir


def test_dockerfile_copies_nothing_that_dockerignore_leaves_out():
    patterns = [
        line.strip().lstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    sources = [source for sources, _ in _copies() for source in sources]

    excluded = [
        (source, pattern)
        for source in sources
        for pattern in patterns
        for prefix in _prefixes(source)
        if re.fullmatch(_pattern_regex(pattern), prefix)
    ]

    assert excluded == []
    assert all((ROOT / source).exists() for source in sources), sources


def _prefixes(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/".join(parts[: index + 1]) for index in range(len(parts))]


def _pattern_regex(pattern: str) -> str:
    """Translate a .dockerignore pattern (Go's filepath.Match plus **) to a regex."""
    regex = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token.startswith("**"):
            regex += "(.*/)?" if token.endswith("/") else ".*"
        elif token == "*":
            regex += "[^/]*"
        elif token == "?":
            regex += "[^/]"
        else:
            regex += re.escape(token)
    return regex


def test_dockerfile_variables_for_the_service_are_in_the_readme():
    readme = (ROOT / "README.md").read_text()

    names = [name for name in _environment() if not name.startswith(("PYTHON", "PIP_"))]

    assert {"PROMETHEUS_MULTIPROC_DIR", "LLM_METRICS_CONFIG"} <= set(names)
    for name in names:
        assert f"`{name}`" in readme, name


def test_operating_docs_describe_the_image_as_the_dockerfile_builds_it():
    docs = _operating_docs()
    words = " ".join(docs.split())
    environment = _environment()
    (exposed,) = _arguments("EXPOSE")
    (base,) = _arguments("FROM")

    assert "docker build -t llm-token-metrics ." in docs
    assert re.search(rf"docker run [^\n]*-p \S*:{exposed}\b", docs), docs
    assert f"`{' '.join(_command())}`" in words
    assert f"with {environment['WEB_CONCURRENCY']} workers" in words
    assert f"`{environment['PROMETHEUS_MULTIPROC_DIR']}`" in words
    assert f"`{base}`" in words


def _image_layout(root: Path) -> tuple[Path, Path]:
    """Lay out the image's files: the installed package apart from the workdir."""
    site, workdir = root / "site-packages", root / "app"
    for package in _packages():
        target = site / package.replace(".", "/")
        target.mkdir(parents=True)
        # Each listed package brings its own modules, not its sub-packages.
        for module in (ROOT / package.replace(".", "/")).glob("*.py"):
            shutil.copy(module, target)

    for sources, destination in _copies():
        relative = posixpath.relpath(destination, _workdir())
        if relative.startswith(".."):
            continue
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, workdir / relative, dirs_exist_ok=True)
            else:
                (workdir / relative).mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, workdir / relative)

    return site, workdir


def _image_environment(
    site: Path, workdir: Path, multiproc_dir: Path
) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LLM_METRICS_", "WEB_CONCURRENCY"))
    }
    for name, value in _environment().items():
        environment[name] = value.replace(_workdir(), str(workdir), 1)

    # The image's directory is outside this test's reach; a fresh one stands
    # in. The commands' "python" and "gunicorn" are found on PATH, as there.
    environment["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    environment["PYTHONPATH"] = str(site)
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment['PATH']}"
    return environment


def _local_command(argv: list[str], port: int) -> list[str]:
    """Return the image's command line, moved to a port on the loopback address."""
    (exposed,) = _arguments("EXPOSE")
    address = re.compile(rf"(0\.0\.0\.0|127\.0\.0\.1):{exposed}\b")
    local = [address.sub(f"127.0.0.1:{port}", argument) for argument in argv]

    assert local != argv, f"no address on port {exposed} in {argv}"
    return local


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_health(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, f"Gunicorn exited:\n{log.read_text()}"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)

    pytest.fail(f"/healthz did not answer 200 within 20 s:\n{log.read_text()}")


def _run_healthcheck(
    command: list[str], environment: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command, env=environment, capture_output=True, check=False, timeout=10
    )


def test_dockerfile_command_outside_a_container_serves_healthz_and_records(tmp_path):
    site, workdir = _image_layout(tmp_path)
    multiproc_dir = tmp_path / "multiproc"
    environment = _image_environment(site, workdir, multiproc_dir)
    port = _free_port()
    command = _local_command(_command(), port)
    healthcheck = _local_command(_healthcheck_command(), port)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"

    origin = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert origin.stdout.startswith(str(site)), origin.stdout

    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=workdir, env=environment, stdout=log_file, stderr=log_file
        )
    try:
        _wait_for_health(process, f"{url}/healthz", log)
        health = requests.get(f"{url}/healthz", timeout=5)
        usage = requests.post(
            f"{url}/v1/usage",
            json={"provider": "groq", "input_tokens": 812, "output_tokens": 97},
            timeout=5,
        )
        metric_files = list(multiproc_dir.glob("*.db"))
        healthy = _run_healthcheck(healthcheck, environment)
    finally:
        stop_process(process)
    unhealthy = _run_healthcheck(healthcheck, environment)

    assert health.json() == {"status": "ok"}
    assert usage.status_code == 200, usage.text
    assert metric_files, "the workers wrote no metric files where the image says"
    assert log.read_text().count("Booting worker") == int(
        _environment()["WEB_CONCURRENCY"]
    )
    assert healthy.returncode == 0
    assert unhealthy.returncode != 0
