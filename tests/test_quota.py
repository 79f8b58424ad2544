"""Quota windows and usage with an injected clock."""

import datetime
from zoneinfo import ZoneInfo

import pytest

from service.config import settings_from_document
from service.quota import measure_usage
from service.quota_windows import QuotaWindows
from service.window_format import window_files

LA = ZoneInfo("America/Los_Angeles")
CONFIG = {
    "providers": {
        "groq": {"rpm": 30, "rpd": 14400, "tpm": 6000},
        "gemini": {
            "rpm": 10,
            "rpd": 500,
            "tpm": 250000,
            "tpm_counts": "input",
            "rpd_reset": "00:00 America/Los_Angeles",
        },
        "openai": {},
        "mistral": {"rpm": 60},
    }
}
SETTINGS = settings_from_document(CONFIG)
START = 1_790_000_000.25


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock(START)


@pytest.fixture
def windows(tmp_path, clock):
    return QuotaWindows(SETTINGS, tmp_path, clock=clock)


def _usage(tmp_path, now, settings=SETTINGS):
    return {
        (usage.provider, usage.quota_type): usage
        for usage in measure_usage(settings, tmp_path, now=now)
    }


def test_usage_counts_requests_and_tokens_of_the_minute(tmp_path, windows):
    for _ in range(3):
        windows.add_call("groq", 1000, 500)

    usage = _usage(tmp_path, START + 1)

    assert usage[("groq", "rpm")].used == 3
    assert usage[("groq", "rpm")].percent == 10.0
    assert usage[("groq", "tpm")].used == 4500
    assert usage[("groq", "tpm")].percent == 75.0
    assert usage[("groq", "rpd")].used == 3


def test_usage_counts_only_input_tokens_where_configured(tmp_path, windows):
    windows.add_call("gemini", 1000, 700)

    usage = _usage(tmp_path, START)

    assert usage[("gemini", "tpm")].used == 1000


def test_usage_has_no_series_for_missing_limits(tmp_path, windows):
    windows.add_call("openai", 5, 5)
    windows.add_call("mistral", 5, 5)

    usage = _usage(tmp_path, START)

    assert not any(provider == "openai" for provider, _ in usage)
    assert {key for key in usage if key[0] == "mistral"} == {("mistral", "rpm")}


def test_usage_passes_100_percent_over_the_limit(tmp_path, windows):
    for _ in range(45):
        windows.add_call("groq", 0, 0)

    usage = _usage(tmp_path, START)

    assert usage[("groq", "rpm")].percent == 150.0


def test_minute_window_slides_to_zero_while_day_keeps_count(tmp_path, windows, clock):
    windows.add_call("groq", 100, 100)
    clock.now = START + 30
    windows.add_call("groq", 100, 100)

    at_59 = _usage(tmp_path, START + 59)
    at_61 = _usage(tmp_path, START + 61)
    at_91 = _usage(tmp_path, START + 91)

    assert (at_59[("groq", "rpm")].used, at_59[("groq", "tpm")].used) == (2, 400)
    assert (at_61[("groq", "rpm")].used, at_61[("groq", "tpm")].used) == (1, 200)
    assert (at_91[("groq", "rpm")].used, at_91[("groq", "tpm")].used) == (0, 0)
    assert at_91[("groq", "rpd")].used == 2


def test_rolling_day_forgets_calls_after_24_hours(tmp_path, windows):
    windows.add_call("groq", 1, 1)

    just_inside = _usage(tmp_path, START + 86_400 - 61)
    past = _usage(tmp_path, START + 86_400 + 1)

    assert just_inside[("groq", "rpd")].used == 1
    assert past[("groq", "rpd")].used == 0


def test_reused_slot_drops_the_old_counts(tmp_path, windows, clock):
    windows.add_call("groq", 10, 10)
    clock.now = START + 120  # same minute slot, two turns later
    windows.add_call("groq", 1, 1)

    usage = _usage(tmp_path, START + 120)

    assert usage[("groq", "rpm")].used == 1
    assert usage[("groq", "tpm")].used == 2
    assert usage[("groq", "rpd")].used == 2


def _pacific(*fields) -> float:
    return datetime.datetime(*fields, tzinfo=LA).timestamp()


def test_daily_reset_starts_the_day_at_midnight_pacific(tmp_path, clock):
    clock.now = _pacific(2026, 7, 1, 23, 59, 45)
    windows = QuotaWindows(SETTINGS, tmp_path, clock=clock)
    windows.add_call("gemini", 1, 1)
    windows.add_call("gemini", 1, 1)
    clock.now = _pacific(2026, 7, 2, 0, 0, 10)
    windows.add_call("gemini", 1, 1)

    before_midnight = _usage(tmp_path, _pacific(2026, 7, 1, 23, 59, 59))
    after_midnight = _usage(tmp_path, _pacific(2026, 7, 2, 0, 0, 30))

    assert before_midnight[("gemini", "rpd")].used == 2
    assert after_midnight[("gemini", "rpd")].used == 1
    assert after_midnight[("gemini", "rpm")].used == 3  # the minute window slides on


def test_daily_reset_counts_the_whole_25_hour_autumn_day(tmp_path, clock):
    clock.now = _pacific(2026, 11, 1, 0, 5)  # the day clocks go back
    windows = QuotaWindows(SETTINGS, tmp_path, clock=clock)
    windows.add_call("gemini", 1, 1)

    late = _usage(tmp_path, _pacific(2026, 11, 1, 23, 59))

    assert late[("gemini", "rpd")].used == 1


def test_usage_adds_every_window_file_of_the_directory(tmp_path, clock):
    first = QuotaWindows(SETTINGS, tmp_path, clock=clock)
    first.add_call("groq", 1, 1)
    (tmp_path / "quota_1.win").write_bytes(
        next(iter(window_files(tmp_path))).read_bytes()
    )

    usage = _usage(tmp_path, START)

    assert len(window_files(tmp_path)) == 2
    assert usage[("groq", "rpm")].used == 2


def test_usage_ignores_a_file_that_is_not_a_window_file(tmp_path, windows):
    windows.add_call("groq", 1, 1)
    (tmp_path / "quota_2.win").write_bytes(b"not a window file")

    usage = _usage(tmp_path, START)

    assert usage[("groq", "rpm")].used == 1


def test_short_windows_from_settings_scale_the_slots(tmp_path, clock):
    settings = settings_from_document(
        {
            "service": {
                "quota_minute_window_seconds": 3,
                "quota_day_window_seconds": 30,
            },
            **CONFIG,
        }
    )
    windows = QuotaWindows(settings, tmp_path, clock=clock)
    windows.add_call("groq", 1, 1)

    within = _usage(tmp_path, START + 2.9, settings)
    after_minute = _usage(tmp_path, START + 3.2, settings)
    after_day = _usage(tmp_path, START + 30.5, settings)

    assert within[("groq", "rpm")].used == 1
    assert after_minute[("groq", "rpm")].used == 0
    assert after_minute[("groq", "rpd")].used == 1
    assert after_day[("groq", "rpd")].used == 0
