"""Folding dead workers' files: exact totals before, during and after."""

import os
import shutil
import subprocess
import sys
import textwrap
import threading

from prometheus_client.exposition import generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import CollectorRegistry

from service.collector import WorkerFilesCollector
from service.compaction import fold_dead_worker
from service.config import load_settings
from service.quota import measure_usage
from tests.support import ROOT, parse_samples, write_config

RECORDER = textwrap.dedent(
    """
    import os, sys
    from service.metrics import record_tokens, update_quota_usage
    seed = int(sys.argv[1])
    for index in range(50):
        record_tokens("groq", (seed * 37 + index) % 3000, index)
        record_tokens("gemini", seed, 1)
    update_quota_usage("openai", "rpm", float(seed))
    print(os.getpid())
    """
)


def _record_in_processes(directory, config, count):
    """Run ``count`` short-lived recording processes; return their pids in exit order."""
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "LLM_METRICS_CONFIG": str(config),
    }
    pids = []
    for seed in range(count):
        result = subprocess.run(
            [sys.executable, "-c", RECORDER, str(seed)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        pids.append(int(result.stdout))
    return pids


def _scrape(directory):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerFilesCollector(directory))
    return parse_samples(generate_latest(registry).decode())


def _upstream_scrape(directory):
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=str(directory))
    return parse_samples(generate_latest(registry).decode())


def test_fold_keeps_every_total_and_shrinks_the_directory(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    config = write_config(tmp_path)
    settings = load_settings(config)
    pids = _record_in_processes(directory, config, 6)
    untouched = tmp_path / "untouched"
    shutil.copytree(directory, untouched)
    before = _scrape(directory)
    quota_before = measure_usage(settings, directory)

    results = [fold_dead_worker(directory, pid) for pid in pids]

    assert _scrape(directory) == before
    assert _upstream_scrape(untouched) == before
    assert measure_usage(settings, directory) == quota_before
    assert all(len(result.folded) == 4 and result.kept == [] for result in results)
    assert sorted(
        name for name in os.listdir(directory) if not name.endswith(".lock")
    ) == [
        "counter_archive.db",
        "gauge_mostrecent_archive.db",
        "histogram_archive.db",
        "quota_archive.win",
    ]


def test_fold_keeps_the_newest_mostrecent_gauge(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    pids = _record_in_processes(directory, write_config(tmp_path), 3)

    for pid in pids:
        fold_dead_worker(directory, pid)

    # The third process (seed 2) set the gauge last.
    assert (
        _scrape(directory)[
            ("llm_quota_usage_percent", (("provider", "openai"), ("quota_type", "rpm")))
        ]
        == 2.0
    )


def _write_gauge_file(path, value, timestamp=0.0):
    key = mmap_key("level", "level", [], [], "A level.")
    values = MmapedDict(str(path))
    values.write_value(key, value, timestamp)
    values.close()


def test_fold_combines_max_min_and_sum_gauges_by_their_mode(tmp_path):
    for mode, expected in (("max", 9.0), ("min", 2.0), ("sum", 11.0)):
        directory = tmp_path / mode
        directory.mkdir()
        _write_gauge_file(directory / f"gauge_{mode}_101.db", 2.0)
        _write_gauge_file(directory / f"gauge_{mode}_102.db", 9.0)

        fold_dead_worker(directory, 101)
        fold_dead_worker(directory, 102)

        assert _scrape(directory)[("level", ())] == expected
        assert [name for name in os.listdir(directory) if name.endswith(".db")] == [
            f"gauge_{mode}_archive.db"
        ]


def test_fold_leaves_all_mode_gauges_which_carry_the_pid(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    _write_gauge_file(directory / "gauge_all_101.db", 4.0)

    result = fold_dead_worker(directory, 101)

    assert result.kept == ["gauge_all_101.db"]
    assert _scrape(directory)[("level", (("pid", "101"),))] == 4.0


def test_new_worker_with_a_folded_pid_counts_on_top_of_the_archive(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    config = write_config(tmp_path)
    pids = _record_in_processes(directory, config, 2)
    for pid in pids:
        fold_dead_worker(directory, pid)
    before = _scrape(directory)
    key = mmap_key(
        "llm_tokens",
        "llm_tokens_total",
        ["provider", "type"],
        ["groq", "input"],
        "Tokens consumed, by provider and type (input or output).",
    )

    reused = MmapedDict(str(directory / f"counter_{pids[0]}.db"))
    reused.write_value(key, 5.0, 0.0)
    reused.close()

    groq_input = ("llm_tokens_total", (("provider", "groq"), ("type", "input")))
    assert _scrape(directory)[groq_input] == before[groq_input] + 5


def test_scrapes_during_folds_always_see_the_same_totals(tmp_path):
    """Folds swap files while scrapes read them; every scrape must see each event once."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    pids = _record_in_processes(directory, write_config(tmp_path), 12)
    expected = _scrape(directory)
    seen, errors, stop = [], [], threading.Event()

    def scrape_continuously():
        while not stop.is_set():
            try:
                seen.append(_scrape(directory))
            except Exception as exc:  # noqa: BLE001 - any failure fails the test
                errors.append(repr(exc))

    scrapers = [threading.Thread(target=scrape_continuously) for _ in range(3)]
    for scraper in scrapers:
        scraper.start()
    for pid in pids:
        fold_dead_worker(directory, pid)
    stop.set()
    for scraper in scrapers:
        scraper.join()

    assert errors == []
    assert len(seen) >= 10
    assert all(samples == expected for samples in seen)


def test_collector_passes_over_files_not_yet_sized_or_half_written(tmp_path):
    """A worker's new empty file and a fold's unfinished archive are not read."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    _record_in_processes(directory, write_config(tmp_path), 1)
    before = _scrape(directory)

    (directory / "counter_99999.db").touch()
    (directory / "histogram_99999.db").write_bytes(b"\0" * 8)
    (directory / "counter_archive.db.tmp").write_bytes(b"\xff" * 100)
    (directory / "quota_archive.win.tmp").write_bytes(b"\xff" * 100)

    assert _scrape(directory) == before
