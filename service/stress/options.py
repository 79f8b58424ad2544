"""The command line of the stress tool, checked into one ``Options`` value."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from service.config import INGEST_TOKEN_ENV, PROVIDER_NAME, SCRAPE_TOKEN_ENV
from service.stress.http_client import check_url
from service.validation import MAX_ITEMS

DEFAULT_PROVIDERS = ("groq", "gemini", "openai")
DEFAULT_REQUESTS = 2000
DEFAULT_PROCESS_CALLS = 100_000

DESCRIPTION = """\
Check that every token recorded shows up in the metrics, under your worker
count and your load.

HTTP mode (the default) posts usage from concurrent clients, single calls as
JSON objects and batches as arrays, with known token counts. It scrapes
/metrics before and after, and compares what it sent with what the service
counted, per provider and type, in llm_tokens_total and in the _count and _sum
of llm_tokens_consumed. Without --url it starts its own service under Gunicorn
(temporary multiprocess directory and config), runs, and stops it.

Process mode (--mode processes) has P processes of T threads call
record_tokens() directly against a fresh multiprocess directory, then merges
the files as /metrics does, and checks them the same way."""

EPILOG = """\
what the report's numbers mean:
  sent           calls of the requests the service acknowledged: 200 with
                 {"recorded": N} for a request of N calls (process mode:
                 record_tokens calls that returned)
  counted        for each provider, the increase of llm_tokens_consumed_count
                 during the run, the smaller of its input and output series
  lost           sent calls missing from the counted ones
  counted twice  counted calls beyond those sent (and beyond those unconfirmed)
  errors         requests with no answer, a timeout, a 5xx or a 200 without
                 the right "recorded": their calls are "unconfirmed", recorded
                 or not, nobody can tell; so any error fails the run, and
                 "lost" becomes a floor
  calls/s        sent calls per second of load (time held for a worker kill
                 left out); rps in --json is acknowledged requests per second
  p50, p99       request latency (process mode: record_tokens latency), to
                 within 1%

--kill-worker holds every client between two requests, SIGKILLs a worker that
has recorded once no request is in flight, waits for its replacement and lets
the clients go on. No request is cut in half, so the check stays exact.

With --url, the service's counts before the run are subtracted, so the check
is exact only while nothing else records to that service during the run.
Tokens are best given through LLM_METRICS_INGEST_TOKEN and
LLM_METRICS_SCRAPE_TOKEN rather than on the command line, where other users
of the host can see them.

exit status: 0 when nothing is lost, nothing is counted twice and no request
failed; 1 when the check fails; 2 for bad arguments, a service that cannot be
reached or started, or a service that refuses the requests (400, 401, 404...)."""

# Options that only one mode (or the self-started service) uses: giving
# them elsewhere is an error, not a silent no-op.
_HTTP_ONLY = ("url", "clients", "batch", "workers", "max_requests", "kill_worker")
_PROCESS_ONLY = ("processes", "threads")
_SELF_STARTED_ONLY = ("workers", "max_requests", "kill_worker")


@dataclass(frozen=True)
class Options:
    """A checked command line, with every default filled in."""

    mode: str = "http"
    url: str | None = None
    ingest_token: str | None = None
    scrape_token: str | None = None
    clients: int = 8
    requests: int | None = DEFAULT_REQUESTS
    duration_seconds: float | None = None
    batch: int = 10
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    workers: int = 4
    max_requests: int | None = None
    kill_worker: bool = False
    processes: int = 4
    threads: int = 4
    json: bool = False
    verbose: bool = False


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """Parse and check the command line; exit with status 2 on a bad argument."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        return _options(namespace)
    except ValueError as exc:
        parser.error(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-token-metrics-stress",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        choices=("http", "processes"),
        default="http",
        help="post to a service over HTTP (default), or record from processes",
    )
    _add_http_arguments(parser.add_argument_group("HTTP mode"))
    _add_process_arguments(parser.add_argument_group("process mode"))
    _add_common_arguments(parser.add_argument_group("both modes"))
    return parser


def _add_http_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--url",
        help="a running service, such as http://127.0.0.1:8000; without it the "
        "tool starts its own",
    )
    group.add_argument(
        "--ingest-token",
        metavar="TOKEN",
        default=os.environ.get(INGEST_TOKEN_ENV),
        help=f"bearer token for /v1/usage (default: ${INGEST_TOKEN_ENV})",
    )
    group.add_argument(
        "--scrape-token",
        metavar="TOKEN",
        default=os.environ.get(SCRAPE_TOKEN_ENV),
        help=f"bearer token for /metrics (default: ${SCRAPE_TOKEN_ENV})",
    )
    group.add_argument(
        "--clients",
        type=int,
        metavar="N",
        help="concurrent clients, one connection each (8)",
    )
    group.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help=f"most calls in one request, 1 to {MAX_ITEMS}; each request carries "
        "1 to N calls, one call as an object, more as an array (10)",
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="workers of the self-started service (4)",
    )
    group.add_argument(
        "--max-requests",
        type=int,
        metavar="N",
        help="recycle each self-started worker after this many requests",
    )
    group.add_argument(
        "--kill-worker",
        action="store_true",
        default=None,
        help="SIGKILL a self-started worker midway through the run",
    )


def _add_process_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--processes", type=int, metavar="P", help="recording processes (4)"
    )
    group.add_argument(
        "--threads", type=int, metavar="T", help="threads per process (4)"
    )


def _add_common_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help=f"requests in all ({DEFAULT_REQUESTS}); in process mode, "
        f"record_tokens calls in all ({DEFAULT_PROCESS_CALLS})",
    )
    group.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="run for this long instead of a number of requests",
    )
    group.add_argument(
        "--providers",
        metavar="NAMES",
        default=",".join(DEFAULT_PROVIDERS),
        help="comma-separated providers to record; with --url they must be "
        "configured in the service (%(default)s)",
    )
    group.add_argument(
        "--json", action="store_true", help="print the report as one JSON line"
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", help="log what the tool does"
    )


def _options(namespace: argparse.Namespace) -> Options:
    """Check the parsed arguments against each other and fill in the defaults."""
    given = {name for name, value in vars(namespace).items() if value is not None}
    _reject_misplaced(namespace.mode, namespace.url, given)

    requests, duration = namespace.requests, namespace.duration
    if requests is not None and duration is not None:
        raise ValueError("Give --requests or --duration, not both.")
    if requests is None and duration is None:
        processes = namespace.mode == "processes"
        requests = DEFAULT_PROCESS_CALLS if processes else DEFAULT_REQUESTS

    defaults = Options()
    return Options(
        mode=namespace.mode,
        url=None if namespace.url is None else check_url(namespace.url),
        ingest_token=namespace.ingest_token or None,
        scrape_token=namespace.scrape_token or None,
        clients=_bounded(namespace.clients, defaults.clients, "--clients", 1, 1000),
        requests=None
        if requests is None
        else _bounded(requests, 0, "--requests", 1, 100_000_000),
        duration_seconds=_duration(duration),
        batch=_bounded(namespace.batch, defaults.batch, "--batch", 1, MAX_ITEMS),
        providers=_providers(namespace.providers),
        workers=_bounded(namespace.workers, defaults.workers, "--workers", 1, 64),
        max_requests=_bounded_or_none(namespace.max_requests, "--max-requests"),
        kill_worker=bool(namespace.kill_worker),
        processes=_bounded(
            namespace.processes, defaults.processes, "--processes", 1, 64
        ),
        threads=_bounded(namespace.threads, defaults.threads, "--threads", 1, 256),
        json=namespace.json,
        verbose=namespace.verbose,
    )


def _reject_misplaced(mode: str, url: str | None, given: set[str]) -> None:
    if mode == "processes":
        misplaced = [name for name in _HTTP_ONLY if name in given]
        where = "HTTP mode"
    else:
        misplaced = [name for name in _PROCESS_ONLY if name in given]
        where = "--mode processes"

    if misplaced:
        raise ValueError(f"{_flag(misplaced[0])} applies only to {where}.")

    if url is not None:
        misplaced = [name for name in _SELF_STARTED_ONLY if name in given]
        if misplaced:
            raise ValueError(
                f"{_flag(misplaced[0])} applies only to the service the tool "
                "starts itself, not to --url."
            )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bounded(value: int | None, default: int, flag: str, low: int, high: int) -> int:
    value = default if value is None else value
    if not low <= value <= high:
        raise ValueError(f"{flag} must be from {low} to {high:,}, got {value}.")

    return value


def _bounded_or_none(value: int | None, flag: str) -> int | None:
    return None if value is None else _bounded(value, 0, flag, 1, 1_000_000)


def _duration(seconds: float | None) -> float | None:
    if seconds is not None and not 0 < seconds <= 3600:
        raise ValueError(
            f"--duration must be more than 0 and at most 3600 seconds, got {seconds}."
        )

    return seconds


def _providers(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",")))
    for name in names:
        if not PROVIDER_NAME.fullmatch(name):
            raise ValueError(
                "--providers must list provider names of 1 to 64 lowercase "
                f"letters, digits, '.', '_' or '-', got {name!r}."
            )

    return names
