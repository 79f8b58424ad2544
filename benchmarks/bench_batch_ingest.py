"""Batch ingestion: 100 calls per request, in calls per second.

The service runs under gunicorn.conf.py with 2 sync workers; wrk posts a
batch of 100 calls over 8 connections. The baseline is the bare Flask app
parsing the same batches. Run:
    .venv/bin/python benchmarks/bench_batch_ingest.py [seconds]
"""

from __future__ import annotations

import json
import sys

from serving import gunicorn, wrk_requests_per_second

CALLS_PER_REQUEST = 100
BODY = json.dumps(
    [
        {
            "provider": ("groq", "gemini", "openai")[index % 3],
            "input_tokens": 50 * index,
            "output_tokens": index,
        }
        for index in range(CALLS_PER_REQUEST)
    ]
)


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with gunicorn(workers=2) as url:
        service = wrk_requests_per_second(f"{url}/v1/usage", BODY, seconds)
    with gunicorn("benchmarks.bare_app:app", workers=2) as url:
        bare = wrk_requests_per_second(f"{url}/v1/usage", BODY, seconds)

    print(f"bare Flask app:     {bare * CALLS_PER_REQUEST:9.0f} calls/s")
    print(
        f"llm-token-metrics:  {service * CALLS_PER_REQUEST:9.0f} calls/s  (goal >= 50000)"
    )
    print(f"ratio service/bare: {service / bare:9.3f}")


if __name__ == "__main__":
    main()
