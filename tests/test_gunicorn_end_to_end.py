"""Real Gunicorn workers on 127.0.0.1: totals stay exact whatever the workers do."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support import (
    assert_totals,
    parse_samples,
    start_service,
    value,
    writer_pids,
)

PROVIDERS = ("groq", "gemini", "openai")


def _calls(seed: int, count: int) -> list[tuple[str, int, int]]:
    generator = random.Random(seed)
    return [
        (
            generator.choice(PROVIDERS),
            generator.choice(
                (0, 1, 99, 100, 101, 700, 1999, 4000, 9000, 10001, 250_000)
            ),
            generator.randrange(0, 12_000),
        )
        for _ in range(count)
    ]


def _payload(calls: list[tuple[str, int, int]]) -> list[dict[str, object]]:
    return [
        {
            "provider": provider,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        for provider, input_tokens, output_tokens in calls
    ]


def _send(url: str, batches: list[list[tuple[str, int, int]]]) -> None:
    """Post each batch, single items as objects and larger batches as arrays."""
    with requests.Session() as session:
        for batch in batches:
            body = _payload(batch)[0] if len(batch) == 1 else _payload(batch)
            response = session.post(f"{url}/v1/usage", json=body, timeout=10)
            assert response.status_code == 200, response.text
            assert response.json() == {"recorded": len(batch)}


def _split(
    calls: list[tuple[str, int, int]], clients: int
) -> list[list[list[tuple[str, int, int]]]]:
    """Cut calls into batches of 1 to 7 and deal the batches to clients."""
    batches, position, size = [], 0, 1
    while position < len(calls):
        batches.append(calls[position : position + size])
        position += size
        size = size % 7 + 1
    return [batches[index::clients] for index in range(clients)]


def _run_clients(url: str, calls: list[tuple[str, int, int]], clients: int) -> None:
    with ThreadPoolExecutor(clients) as pool:
        for future in [
            pool.submit(_send, url, share) for share in _split(calls, clients)
        ]:
            future.result()


def test_concurrent_clients_every_scrape_shows_exact_totals(tmp_path):
    service = start_service(tmp_path, workers=4)
    calls = _calls(seed=1, count=1200)

    try:
        _run_clients(service.url, calls, clients=16)
        scrapes = [service.scrape() for _ in range(24)]
        writers = [
            name
            for name in os.listdir(service.multiproc_dir)
            if name.startswith("counter_")
        ]
    finally:
        service.stop()

    assert len(writers) >= 2, "the traffic should have reached several workers"
    for samples in scrapes:
        assert_totals(samples, calls)


def test_sigkilled_worker_loses_nothing(tmp_path):
    service = start_service(tmp_path, workers=4)
    before_kill, after_kill = _calls(seed=2, count=400), _calls(seed=3, count=400)

    try:
        _run_clients(service.url, before_kill, clients=8)
        recorded = writer_pids(service.multiproc_dir, "counter_")
        victim = next(pid for pid in service.worker_pids() if pid in recorded)
        os.kill(victim, signal.SIGKILL)
        _wait_until(lambda: victim not in service.worker_pids())
        after_kill_scrape = service.scrape()

        _run_clients(service.url, after_kill, clients=8)
        final_scrapes = [service.scrape() for _ in range(8)]
    finally:
        service.stop()

    assert_totals(after_kill_scrape, before_kill)
    for samples in final_scrapes:
        assert_totals(samples, before_kill + after_kill)


def test_recycled_workers_keep_totals_exact_and_monotone(tmp_path):
    service = start_service(tmp_path, "--max-requests", "15", workers=4)
    calls = _calls(seed=4, count=1500)
    stop = threading.Event()
    scrapes: list[dict] = []
    failures: list[str] = []

    def scrape_continuously() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.get(f"{service.url}/metrics", timeout=10)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    scrapes.append(parse_samples(response.text))

    try:
        scraper = threading.Thread(target=scrape_continuously)
        scraper.start()
        _run_clients(service.url, calls, clients=8)
        stop.set()
        scraper.join()
        final = service.scrape()
        recycles = service.log().count("Booting worker") - 4
    finally:
        stop.set()
        service.stop()

    assert failures == []
    assert recycles >= 20, f"workers recycled only {recycles} times"
    assert len(scrapes) >= 10
    _assert_monotone(scrapes + [final])
    assert_totals(final, calls)


def _assert_monotone(scrapes: list[dict]) -> None:
    """Assert that no counter or histogram sample ever goes down between scrapes."""
    for earlier, later in zip(scrapes, scrapes[1:], strict=False):
        for key, earlier_value in earlier.items():
            if key[0].startswith(("llm_tokens_total", "llm_tokens_consumed")):
                assert later.get(key, 0.0) >= earlier_value, key


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_metrics_lists_the_contracted_names(service):
    service.post({"provider": "groq", "input_tokens": 812, "output_tokens": 97})

    text = service.session.get(f"{service.url}/metrics", timeout=10).text

    assert "# TYPE llm_tokens_consumed histogram" in text
    assert "# TYPE llm_tokens_total counter" in text
    assert (
        'llm_tokens_consumed_bucket{le="100.0",provider="groq",type="input"} 0.0'
        in text
    )
    assert (
        'llm_tokens_consumed_bucket{le="1000.0",provider="groq",type="input"} 1.0'
        in text
    )
    assert (
        value(parse_samples(text), "llm_tokens_total", provider="groq", type="output")
        == 97
    )


def test_hostile_requests_over_http_get_4xx_and_record_nothing(service):
    service.post({"provider": "groq", "input_tokens": 5, "output_tokens": 5})
    before = service.scrape()
    url = f"{service.url}/v1/usage"
    headers = {"Content-Type": "application/json"}

    def chunked_oversize():
        for _ in range(40):
            yield b" " * 65536

    statuses = [
        requests.post(
            url, data=b" " * (2 << 20), headers=headers, timeout=10
        ).status_code,
        requests.post(
            url, data=chunked_oversize(), headers=headers, timeout=10
        ).status_code,
        requests.post(
            url, data=iter([b'{"provider": "groq", ']), headers=headers, timeout=10
        ).status_code,
        requests.post(
            url, data=b"[" * 300_000, headers=headers, timeout=10
        ).status_code,
        requests.post(
            url, data=b"\x00\xff" * 1000, headers=headers, timeout=10
        ).status_code,
        requests.delete(url, timeout=10).status_code,
        requests.get(
            f"{service.url}/metrics", headers={"Accept": "garbage/*;;;"}, timeout=10
        ).status_code,
    ]

    assert statuses == [413, 413, 400, 400, 400, 405, 200]
    assert service.scrape() == before


def test_metrics_shows_every_configured_provider_at_zero_before_any_call(service):
    samples = service.scrape()

    for provider in ("groq", "gemini", "openai"):
        for kind in ("input", "output"):
            labels = {"provider": provider, "type": kind}
            assert ("llm_tokens_total", tuple(sorted(labels.items()))) in samples
            assert value(samples, "llm_tokens_total", **labels) == 0.0
            assert value(samples, "llm_tokens_consumed_count", **labels) == 0.0


def test_reload_with_sighup_keeps_the_directory_and_the_totals(tmp_path):
    service = start_service(tmp_path, workers=3)
    calls = _calls(seed=9, count=300)

    try:
        _run_clients(service.url, calls, clients=6)
        before = service.scrape()
        os.kill(service.process.pid, signal.SIGHUP)
        _wait_until(lambda: service.log().count("Booting worker") >= 6)
        _wait_until(lambda: len(service.worker_pids()) == 3)
        after = service.scrape()
        folds = service.log().count("Folded dead worker files")
    finally:
        service.stop()

    assert folds >= 3, "the old workers should have been folded away"
    assert_totals(before, calls)
    assert_totals(after, calls)


def test_worker_sigkilled_during_traffic_loses_no_acknowledged_call(tmp_path):
    """Requests cut by the kill may or may not count; acknowledged ones always do."""
    service = start_service(tmp_path, workers=4)
    calls = _calls(seed=10, count=1600)
    acknowledged, unanswered = [], []
    lock = threading.Lock()

    def send(share):
        with requests.Session() as session:
            for batch in share:
                try:
                    response = session.post(
                        f"{service.url}/v1/usage", json=_payload(batch), timeout=10
                    )
                    ok = response.status_code == 200
                except requests.ConnectionError:
                    ok = False
                with lock:
                    (acknowledged if ok else unanswered).extend(batch)

    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send, share) for share in _split(calls, 8)]
            _wait_until(lambda: len(acknowledged) > 300)
            os.kill(service.worker_pids()[0], signal.SIGKILL)
            for future in futures:
                future.result()
        final = service.scrape()
    finally:
        service.stop()

    assert len(acknowledged) + len(unanswered) == len(calls)
    for provider in PROVIDERS:
        for kind, index in (("input", 1), ("output", 2)):
            counted = value(final, "llm_tokens_total", provider=provider, type=kind)
            sure = sum(call[index] for call in acknowledged if call[0] == provider)
            maybe = sum(call[index] for call in unanswered if call[0] == provider)
            assert sure <= counted <= sure + maybe, (provider, kind)
