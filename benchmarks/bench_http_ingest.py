"""HTTP ingestion, one call per request, against a bare Flask app.

Both run under the same Gunicorn settings (gunicorn.conf.py, 2 sync
workers) and are loaded by wrk in alternating rounds; the bare app parses
the same JSON and records nothing. Run:
    .venv/bin/python benchmarks/bench_http_ingest.py [seconds per round]
"""

from __future__ import annotations

import sys

from serving import gunicorn, median, wrk_requests_per_second

BODY = '{"provider": "groq", "input_tokens": 812, "output_tokens": 97}'
ROUNDS = 5


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    service, bare = [], []
    for _ in range(ROUNDS):
        with gunicorn(workers=2) as url:
            service.append(wrk_requests_per_second(f"{url}/v1/usage", BODY, seconds))
        with gunicorn("benchmarks.bare_app:app", workers=2) as url:
            bare.append(wrk_requests_per_second(f"{url}/v1/usage", BODY, seconds))

    print(f"bare Flask app:      {median(bare):8.0f} requests/s  (rounds: {bare})")
    print(
        f"llm-token-metrics:   {median(service):8.0f} requests/s  (rounds: {service})"
    )
    print(f"ratio service/bare:  {median(service) / median(bare):8.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
