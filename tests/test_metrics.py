"""The Python API in one process (prometheus_client's in-memory mode)."""

import threading

import pytest

from service import metrics
from service.config import settings_from_document
from service.metrics import record_tokens, update_quota_usage

SETTINGS = settings_from_document(
    {"providers": {"groq": {"rpm": 30}, "gemini": {}, "openai": {}, "threads": {}}}
)


@pytest.fixture(autouse=True)
def configured():
    metrics.configure(SETTINGS)


def _sample(name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _snapshot(provider):
    names = [
        ("llm_tokens_total", {}),
        ("llm_tokens_consumed_count", {}),
        ("llm_tokens_consumed_sum", {}),
        ("llm_tokens_consumed_bucket", {"le": "100.0"}),
        ("llm_tokens_consumed_bucket", {"le": "1000.0"}),
    ]
    return {
        (name, kind, tuple(extra.items())): _sample(
            name, provider=provider, type=kind, **extra
        )
        for name, extra in names
        for kind in ("input", "output")
    }


def test_record_tokens_moves_histogram_and_counter():
    before = _snapshot("groq")

    record_tokens("groq", 812, 97)

    after = _snapshot("groq")
    delta = {key: after[key] - before[key] for key in after}
    assert delta[("llm_tokens_total", "input", ())] == 812
    assert delta[("llm_tokens_total", "output", ())] == 97
    assert delta[("llm_tokens_consumed_sum", "input", ())] == 812
    assert delta[("llm_tokens_consumed_count", "input", ())] == 1
    assert delta[("llm_tokens_consumed_count", "output", ())] == 1
    assert delta[("llm_tokens_consumed_bucket", "input", (("le", "100.0"),))] == 0
    assert delta[("llm_tokens_consumed_bucket", "input", (("le", "1000.0"),))] == 1
    assert delta[("llm_tokens_consumed_bucket", "output", (("le", "100.0"),))] == 1


def test_record_tokens_keeps_input_and_output_apart():
    before = _snapshot("gemini")

    record_tokens("gemini", 3000, 0)

    after = _snapshot("gemini")
    assert (
        after[("llm_tokens_total", "input", ())]
        - before[("llm_tokens_total", "input", ())]
        == 3000
    )
    assert (
        after[("llm_tokens_total", "output", ())]
        == before[("llm_tokens_total", "output", ())]
    )


def test_record_tokens_keeps_providers_apart():
    groq_before, openai_before = _snapshot("groq"), _snapshot("openai")

    record_tokens("openai", 10, 20)

    assert _snapshot("groq") == groq_before
    assert _snapshot("openai")[("llm_tokens_total", "output", ())] == (
        openai_before[("llm_tokens_total", "output", ())] + 20
    )


def test_histogram_has_the_contracted_buckets():
    record_tokens("groq", 1, 1)

    bounds = {
        sample.labels["le"]
        for family in metrics.registry.collect()
        if family.name == "llm_tokens_consumed"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }

    assert bounds == {"100.0", "500.0", "1000.0", "2000.0", "5000.0", "10000.0", "+Inf"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("groq", -1, 0), "input_tokens must be an integer from 0 to 10000000, got -1"),
        (("groq", 1, 2.5), "output_tokens must be an integer"),
        (("groq", True, 1), "input_tokens must be an integer"),
        (("acme", 1, 1), "'acme' is not a configured provider"),
        (("Bad Name", 1, 1), "provider must be 1 to 64 lowercase letters"),
    ],
)
def test_record_tokens_rejects_bad_arguments_and_records_nothing(arguments, message):
    before = _snapshot("groq")

    with pytest.raises(ValueError, match=message):
        record_tokens(*arguments)

    assert _snapshot("groq") == before


def test_update_quota_usage_sets_gauge():
    update_quota_usage("groq", "rpm", 42.5)
    first = _sample("llm_quota_usage_percent", provider="groq", quota_type="rpm")
    update_quota_usage("groq", "rpm", 130.0)

    second = _sample("llm_quota_usage_percent", provider="groq", quota_type="rpm")

    assert (first, second) == (42.5, 130.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("groq", "rph", 1.0), "quota_type must be one of rpm, rpd or tpm, got 'rph'"),
        (
            ("groq", "rpm", -1.0),
            "usage_percent must be a finite number of at least 0, got -1.0",
        ),
        (("groq", "rpm", float("nan")), "usage_percent must be a finite number"),
        (("groq", "rpm", "50"), "usage_percent must be a finite number"),
        (("", "rpm", 1.0), "provider must be 1 to 64"),
    ],
)
def test_update_quota_usage_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        update_quota_usage(*arguments)


def test_record_tokens_from_many_threads_counts_exactly():
    before = _snapshot("threads")
    threads, calls = 16, 500

    def record() -> None:
        for index in range(calls):
            record_tokens("threads", index % 7, 3)

    workers = [threading.Thread(target=record) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    after = _snapshot("threads")
    per_thread_input = sum(index % 7 for index in range(calls))
    assert (
        after[("llm_tokens_total", "input", ())]
        - before[("llm_tokens_total", "input", ())]
        == threads * per_thread_input
    )
    assert (
        after[("llm_tokens_total", "output", ())]
        - before[("llm_tokens_total", "output", ())]
        == threads * calls * 3
    )
    assert (
        after[("llm_tokens_consumed_count", "output", ())]
        - before[("llm_tokens_consumed_count", "output", ())]
        == threads * calls
    )
