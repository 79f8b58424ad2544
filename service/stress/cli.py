"""The command: parse the options, run the chosen mode, print the verdict."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from service.stress.errors import SetupError
from service.stress.gunicorn_service import GunicornService
from service.stress.http_load import HttpTarget, run_http
from service.stress.options import Options, parse_options
from service.stress.process_load import run_processes
from service.stress.report import RunResult, render_json, render_text

logger = logging.getLogger(__name__)

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stress tool; return 0 (pass), 1 (fail) or 2 (could not check)."""
    options = parse_options(argv)
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    try:
        result = run(options)
    except SetupError as exc:
        print(f"llm-token-metrics-stress: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print("llm-token-metrics-stress: interrupted, no verdict.", file=sys.stderr)
        return EXIT_INTERRUPTED

    print(render_json(result) if options.json else render_text(result))
    return EXIT_PASSED if result.passed else EXIT_FAILED


def run(options: Options) -> RunResult:
    """Run the mode the options ask for and return its result."""
    if options.mode == "processes":
        return run_processes(options, sys.stderr)

    if options.url is not None:
        description = (
            f"{options.url} (a running service; its counts before the run are "
            "subtracted)"
        )
        return run_http(options, HttpTarget(options.url, description), sys.stderr)

    with GunicornService(
        options.workers, options.max_requests, options.providers
    ) as service:
        description = (
            f"self-started Gunicorn at {service.url}, {options.workers} workers"
        )
        if options.max_requests is not None:
            description += f", --max-requests {options.max_requests}"

        target = HttpTarget(service.url, description, service)
        return run_http(options, target, sys.stderr)
