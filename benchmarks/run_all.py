"""Run every benchmark, one after the other. Run: .venv/bin/python benchmarks/run_all.py"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "bench_record_tokens.py",
    "bench_http_ingest.py",
    "bench_batch_ingest.py",
    "bench_scrape_after_recycles.py",
)

for name in BENCHMARKS:
    print(f"== {name}", flush=True)
    subprocess.run([sys.executable, str(HERE / name)], cwd=HERE, check=True)
