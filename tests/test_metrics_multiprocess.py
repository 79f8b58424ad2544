"""record_tokens from several processes and threads, merged as /metrics merges."""

import os
import subprocess
import sys
import textwrap

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from service.collector import WorkerFilesCollector
from tests.support import ROOT, parse_samples, value, write_config

RECORDER = textwrap.dedent(
    """
    import sys, threading
    from service.metrics import record_tokens

    threads, calls = int(sys.argv[1]), int(sys.argv[2])

    def record():
        for index in range(calls):
            record_tokens("groq", index % 1500, 2)
            record_tokens("gemini", 7, index % 11)

    workers = [threading.Thread(target=record) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    """
)


def test_record_tokens_from_processes_and_threads_merges_exactly(tmp_path):
    multiproc_dir = tmp_path / "multiproc"
    multiproc_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        "LLM_METRICS_CONFIG": str(write_config(tmp_path)),
    }
    processes, threads, calls = 4, 4, 300

    children = [
        subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(threads), str(calls)],
            cwd=ROOT,
            env=env,
        )
        for _ in range(processes)
    ]
    for child in children:
        assert child.wait(timeout=60) == 0

    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerFilesCollector(multiproc_dir))
    samples = parse_samples(generate_latest(registry).decode())
    writers = processes * threads
    assert len(list(multiproc_dir.glob("counter_*.db"))) == processes
    assert value(samples, "llm_tokens_total", provider="groq", type="input") == (
        writers * sum(index % 1500 for index in range(calls))
    )
    assert (
        value(samples, "llm_tokens_total", provider="groq", type="output")
        == writers * calls * 2
    )
    assert value(
        samples, "llm_tokens_consumed_count", provider="gemini", type="output"
    ) == (writers * calls)
    assert value(
        samples, "llm_tokens_consumed_bucket", provider="groq", type="input", le="100.0"
    ) == (writers * sum(1 for index in range(calls) if index % 1500 <= 100))
