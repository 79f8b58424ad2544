"""Gunicorn settings and hooks for llm-token-metrics.

Run ``gunicorn -c gunicorn.conf.py``; Gunicorn's own flags (``--bind``,
``--workers``, ``--max-requests``) override the values here.

Every worker records into its own files in ``PROMETHEUS_MULTIPROC_DIR``. The
variable must be set before any worker imports prometheus_client, which picks
multiprocess mode on import, so it is settled here, when Gunicorn reads this
file in the arbiter, before a single worker is forked.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import time
from typing import Any

from service.config import ConfigError, load_settings
from service.multiproc_dir import MULTIPROC_ENV, empty_directory, ensure_directory_env

# Set when this file made the directory itself, so that it is removed on exit;
# an environment variable, because Gunicorn reads this file again on reload.
_OWNED_DIR_ENV = "LLM_METRICS_OWNS_MULTIPROC_DIR"

if not os.environ.get(MULTIPROC_ENV):
    os.environ[_OWNED_DIR_ENV] = "1"
multiproc_dir = ensure_directory_env()

wsgi_app = "service.wsgi:app"
bind = ["127.0.0.1:8000"]
# Two workers per core and one more, Gunicorn's rule of thumb for sync
# workers; WEB_CONCURRENCY overrides it as it does for most Python hosts.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
worker_class = "sync"
timeout = 30
graceful_timeout = 10
accesslog = None
loglevel = "info"
# One control socket per service, beside its files, so that several services
# on one host (or one test run) do not fight over the default path.
control_socket = str(multiproc_dir / "gunicorn.ctl")


def on_starting(server: Any) -> None:
    """Check the config and start from an empty multiprocess directory."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        server.log.error("Invalid configuration: %s", exc)
        sys.exit(1)

    removed = empty_directory(multiproc_dir)
    server.log.info(
        "Multiprocess directory ready (path: %s, stale files removed: %d)",
        multiproc_dir,
        removed,
    )
    server.log.info(
        "Configuration loaded (source: %s, providers: %d)",
        settings.source,
        len(settings.providers),
    )


def post_worker_init(worker: Any) -> None:
    """Send the service's log records to Gunicorn's error log."""
    service_logger = logging.getLogger("service")
    service_logger.handlers = list(worker.log.error_log.handlers)
    service_logger.setLevel(worker.log.error_log.level)
    service_logger.propagate = False


def child_exit(server: Any, worker: Any) -> None:
    """Fold the files of a worker that has exited, however it ended."""
    # Imported here, not at the top: by now the variable is set, and the
    # arbiter must never create metric values of its own.
    from prometheus_client import multiprocess

    from service.compaction import fold_dead_worker

    started = time.perf_counter()
    try:
        multiprocess.mark_process_dead(worker.pid, str(multiproc_dir))
        result = fold_dead_worker(multiproc_dir, worker.pid)
    except Exception:
        # The files stay in place and every scrape still reads them, so
        # nothing is lost; only the directory does not shrink.
        server.log.exception("Failed to fold dead worker files (pid: %s)", worker.pid)
        return

    server.log.info(
        "Folded dead worker files (pid: %s, files: %d, kept: %d, ms: %.1f)",
        worker.pid,
        len(result.folded),
        len(result.kept),
        (time.perf_counter() - started) * 1000,
    )


def on_exit(server: Any) -> None:
    """Remove the multiprocess directory if this configuration made it."""
    if os.environ.get(_OWNED_DIR_ENV) == "1":
        shutil.rmtree(multiproc_dir, ignore_errors=True)
        server.log.info("Multiprocess directory removed (path: %s)", multiproc_dir)
