"""Test fixtures: a clean environment for every test, and real services."""

from __future__ import annotations

import os

# prometheus_client picks multiprocess mode when first imported; the tests
# that run in this process use its in-memory mode, and start subprocesses
# (Gunicorn, recorders) for everything multiprocess.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

import pytest  # noqa: E402

from tests.support import start_service  # noqa: E402

_OWN_VARIABLES = ("LLM_METRICS_", "PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Remove every variable the service reads, so no test sees another's."""
    for name in list(os.environ):
        if name.startswith(_OWN_VARIABLES):
            monkeypatch.delenv(name)


@pytest.fixture
def service(tmp_path):
    """A real Gunicorn service with four workers on a free loopback port."""
    running = start_service(tmp_path)
    yield running
    running.stop()
