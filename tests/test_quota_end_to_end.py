"""Quota usage under real Gunicorn: host-wide, current at every scrape."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support import TEST_CONFIG, start_service, write_config, writer_pids

# groq: rpm 30, rpd 14400, tpm 6000 (input + output);
# gemini: rpm 10, rpd 500, tpm 250000 (input only); openai: no limits.
GROQ_CALL = {"provider": "groq", "input_tokens": 30, "output_tokens": 10}
GEMINI_CALL = {"provider": "gemini", "input_tokens": 1000, "output_tokens": 999}


def _post_many(url, body, requests_count, clients=8):
    def send(count):
        with requests.Session() as session:
            for _ in range(count):
                response = session.post(f"{url}/v1/usage", json=body, timeout=10)
                assert response.status_code == 200, response.text

    shares = [
        requests_count // clients + (index < requests_count % clients)
        for index in range(clients)
    ]
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(send, share) for share in shares]:
            future.result()


def _quota_gauge(samples):
    return {
        (dict(labels)["provider"], dict(labels)["quota_type"]): sample_value
        for (name, labels), sample_value in samples.items()
        if name == "llm_quota_usage_percent"
    }


def _quota_json(service):
    response = service.session.get(f"{service.url}/v1/quota", timeout=10)
    assert response.status_code == 200
    return response.json()["providers"]


def test_quota_is_exact_and_the_same_from_every_worker(tmp_path):
    service = start_service(tmp_path, workers=4)

    try:
        _post_many(service.url, GROQ_CALL, 45)
        _post_many(service.url, [GEMINI_CALL, GEMINI_CALL], 6)
        _post_many(
            service.url,
            {"provider": "openai", "input_tokens": 5, "output_tokens": 5},
            4,
        )
        scrapes = [_quota_gauge(service.scrape()) for _ in range(16)]
        quota = _quota_json(service)
        writers = [
            name
            for name in os.listdir(service.multiproc_dir)
            if name.startswith("quota_")
        ]
    finally:
        service.stop()

    expected = {
        ("groq", "rpm"): 45 / 30 * 100,  # 150: over the limit
        ("groq", "rpd"): 45 / 14400 * 100,
        ("groq", "tpm"): 45 * 40 / 6000 * 100,
        ("gemini", "rpm"): 12 / 10 * 100,
        ("gemini", "rpd"): 12 / 500 * 100,
        ("gemini", "tpm"): 12 * 1000 / 250000 * 100,
    }
    assert len(writers) >= 2, "the calls should have reached several workers"
    for gauge in scrapes:
        assert gauge == expected
    assert quota["groq"]["rpm"] == {
        "used": 45,
        "limit": 30,
        "percent": expected[("groq", "rpm")],
    }
    assert quota["gemini"]["tpm"] == {
        "used": 12000,
        "limit": 250000,
        "percent": expected[("gemini", "tpm")],
    }
    assert "openai" not in quota


def test_quota_survives_a_sigkilled_worker_and_recycling(tmp_path):
    service = start_service(tmp_path, "--max-requests", "8", workers=4)

    try:
        _post_many(service.url, GROQ_CALL, 200)
        before_kill = _quota_gauge(service.scrape())
        writers = writer_pids(service.multiproc_dir, "quota_")
        victim = next(pid for pid in service.worker_pids() if pid in writers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while victim in service.worker_pids():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        after_kill = _quota_gauge(service.scrape())
        _post_many(service.url, GROQ_CALL, 100)
        final = _quota_gauge(service.scrape())
        recycles = service.log().count("Booting worker") - 4
    finally:
        service.stop()

    assert recycles >= 20
    assert before_kill[("groq", "rpd")] == 200 / 14400 * 100
    assert after_kill == before_kill
    assert final[("groq", "rpd")] == 300 / 14400 * 100
    assert final[("groq", "rpm")] == 300 / 30 * 100


def test_minute_quota_decays_to_zero_while_day_quota_keeps_count(tmp_path):
    config = write_config(tmp_path, service_extra="quota_minute_window_seconds = 2")
    service = start_service(tmp_path, config=config, workers=3)

    try:
        _post_many(service.url, GROQ_CALL, 12)
        busy = _quota_gauge(service.scrape())
        time.sleep(2.3)
        idle = [_quota_gauge(service.scrape()) for _ in range(6)]
        _post_many(service.url, GROQ_CALL, 3, clients=1)
        again = _quota_gauge(service.scrape())
    finally:
        service.stop()

    assert busy[("groq", "rpm")] == 40.0
    for gauge in idle:
        assert gauge[("groq", "rpm")] == 0.0
        assert gauge[("groq", "tpm")] == 0.0
        assert gauge[("groq", "rpd")] == 12 / 14400 * 100
    assert again[("groq", "rpm")] == 10.0
    assert again[("groq", "rpd")] == 15 / 14400 * 100


def test_quota_has_series_only_for_configured_limits(tmp_path):
    body = TEST_CONFIG.format(service_extra="") + "\n[providers.mistral]\nrpm = 60\n"
    service = start_service(
        tmp_path, config=write_config(tmp_path, body=body), workers=2
    )

    try:
        gauge = _quota_gauge(service.scrape())
    finally:
        service.stop()

    assert set(gauge) == {
        ("groq", "rpm"),
        ("groq", "rpd"),
        ("groq", "tpm"),
        ("gemini", "rpm"),
        ("gemini", "rpd"),
        ("gemini", "tpm"),
        ("mistral", "rpm"),
    }
    assert set(gauge.values()) == {0.0}


def test_real_sixty_second_window_forgets_calls_after_a_minute(tmp_path):
    """The shipped window length, in real time: counted at 55 s, gone after 60 s."""
    service = start_service(tmp_path, workers=2)

    try:
        _post_many(service.url, GROQ_CALL, 6, clients=2)
        sent_at = time.time()
        time.sleep(max(0.0, sent_at + 55 - time.time()))
        at_55 = _quota_gauge(service.scrape())
        time.sleep(max(0.0, sent_at + 61.5 - time.time()))
        at_61 = _quota_gauge(service.scrape())
    finally:
        service.stop()

    assert at_55[("groq", "rpm")] == 20.0
    assert at_55[("groq", "tpm")] == 6 * 40 / 6000 * 100
    assert at_61[("groq", "rpm")] == 0.0
    assert at_61[("groq", "tpm")] == 0.0
    assert at_61[("groq", "rpd")] == 6 / 14400 * 100
