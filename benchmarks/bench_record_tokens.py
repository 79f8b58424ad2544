"""record_tokens in multiprocess mode against the user story's naive version.

The naive version looks up the label children on every call, as the story's
first draft did; both write the same metrics into the same multiprocess
files. Run: .venv/bin/python benchmarks/bench_record_tokens.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Multiprocess mode is chosen when prometheus_client is first imported.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-record-")

from service import metrics  # noqa: E402
from service.config import load_settings  # noqa: E402

CALLS = 200_000
REPEATS = 5


def naive_record_tokens(provider: str, input_tokens: int, output_tokens: int) -> None:
    """The user story's version: label children looked up on every call."""
    consumed, total = metrics.llm_tokens_consumed, metrics.llm_tokens_total
    consumed.labels(provider=provider, type="input").observe(input_tokens)
    consumed.labels(provider=provider, type="output").observe(output_tokens)
    total.labels(provider=provider, type="input").inc(input_tokens)
    total.labels(provider=provider, type="output").inc(output_tokens)


def best_microseconds(call: object) -> float:
    timer = timeit.Timer(call)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=REPEATS, number=CALLS)) / CALLS * 1e6


def main() -> None:
    metrics.configure(load_settings(ROOT / "config" / "service.toml"))
    record = metrics.record_tokens

    naive = best_microseconds(lambda: naive_record_tokens("groq", 812, 97))
    ours = best_microseconds(lambda: record("groq", 812, 97))
    ours_no_quota = best_microseconds(lambda: record("openai", 812, 97))

    print(f"naive record_tokens (story):          {naive:6.2f} us/call")
    print(f"record_tokens, provider with limits:  {ours:6.2f} us/call")
    print(f"record_tokens, provider without:      {ours_no_quota:6.2f} us/call")
    print(f"ratio ours/naive (limits):            {ours / naive:6.2f}  (goal <= 0.50)")


if __name__ == "__main__":
    main()
