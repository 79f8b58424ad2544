"""Hundreds of worker recycles under continuous scrapes: exact, monotone, bounded."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support import assert_totals, parse_samples, start_service
from tests.test_gunicorn_end_to_end import _assert_monotone, _calls, _payload

WORKERS = 4


def test_recycling_hundreds_of_times_keeps_scrapes_exact_and_directory_small(tmp_path):
    # --preload forks workers from an arbiter that has imported the app, so
    # hundreds of recycles fit in seconds; the arbiter still creates no values.
    service = start_service(
        tmp_path, "--preload", "--max-requests", "2", workers=WORKERS
    )
    calls = _calls(seed=7, count=1200)
    requests_to_send = [calls[index : index + 2] for index in range(0, len(calls), 2)]
    stop = threading.Event()
    scrapes, failures, file_counts = [], [], []

    def scrape_continuously():
        with requests.Session() as session:
            while not stop.is_set():
                response = session.get(f"{service.url}/metrics", timeout=10)
                file_counts.append(len(os.listdir(service.multiproc_dir)))
                if response.status_code == 200:
                    scrapes.append(parse_samples(response.text))
                else:
                    failures.append(f"{response.status_code}: {response.text[:200]}")

    def post(batch):
        response = requests.post(
            f"{service.url}/v1/usage", json=_payload(batch), timeout=10
        )
        assert response.status_code == 200, response.text

    try:
        scrapers = [threading.Thread(target=scrape_continuously) for _ in range(2)]
        for scraper in scrapers:
            scraper.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, requests_to_send))
        stop.set()
        for scraper in scrapers:
            scraper.join()
        final = service.scrape()
        recycles = service.log().count("Booting worker") - WORKERS
        folds = service.log().count("Folded dead worker files")
        fold_errors = service.log().count("Failed to fold")
        files_at_end = sorted(os.listdir(service.multiproc_dir))
        arbiter_files = [
            name for name in files_at_end if str(service.process.pid) in name
        ]
    finally:
        stop.set()
        service.stop()

    assert failures == []
    assert arbiter_files == [], "the arbiter must never create metric values"
    assert fold_errors == 0
    assert recycles >= 200, f"only {recycles} recycles"
    assert folds >= recycles
    assert len(scrapes) >= 20
    _assert_monotone(scrapes + [final])
    assert_totals(final, calls)
    # Live workers' four files each (and those of a worker exiting right
    # now), the four archives, two lock files and the control socket.
    assert max(file_counts) <= 4 * (WORKERS + 2) + 7, max(file_counts)
    assert len(files_at_end) <= 4 * WORKERS + 7, files_at_end
