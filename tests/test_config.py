import subprocess

import pytest

from service.config import (
    ConfigError,
    DailyReset,
    load_settings,
    settings_from_document,
)
from tests.support import GUNICORN, ROOT


def test_shipped_config_loads_every_common_provider():
    settings = load_settings(ROOT / "config" / "service.toml")

    assert {
        "openai",
        "anthropic",
        "gemini",
        "groq",
        "mistral",
        "deepseek",
        "openrouter",
        "cerebras",
    } <= set(settings.providers)
    assert settings.providers["gemini"].tpm_counts == "input"
    assert str(settings.providers["gemini"].rpd_reset) == "00:00 America/Los_Angeles"
    assert settings.providers["openai"].has_limits is False
    assert settings.max_tokens_per_call == 10_000_000


def test_config_env_overrides_the_file():
    document = {
        "service": {"max_tokens_per_call": 50, "allow_unknown_providers": False}
    }
    environ = {
        "LLM_METRICS_MAX_TOKENS_PER_CALL": "70",
        "LLM_METRICS_ALLOW_UNKNOWN_PROVIDERS": "true",
        "LLM_METRICS_INGEST_TOKEN": "in-secret",
        "LLM_METRICS_SCRAPE_TOKEN": "out-secret",
    }

    settings = settings_from_document(document, environ)

    assert settings.max_tokens_per_call == 70
    assert settings.allow_unknown_providers is True
    assert (settings.ingest_token, settings.scrape_token) == ("in-secret", "out-secret")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"providers": {"groq": {"rph": 5}}},
            r"\[providers.groq\] has an unknown setting 'rph'",
        ),
        (
            {"providers": {"groq": {"rpm": -1}}},
            r"providers.groq.rpm must be a positive integer, got -1",
        ),
        (
            {"providers": {"groq": {"tpm": 0}}},
            r"providers.groq.tpm must be a positive integer, got 0",
        ),
        (
            {"providers": {"groq": {"rpd": 1.5}}},
            r"providers.groq.rpd must be a positive integer",
        ),
        (
            {"providers": {"Groq!": {}}},
            r"providers.'Groq!' is not a valid provider name",
        ),
        (
            {"providers": {"gemini": {"rpd_reset": "midnight"}}},
            r"providers.gemini.rpd_reset must be",
        ),
        (
            {"providers": {"gemini": {"rpd_reset": "25:00 UTC"}}},
            r"rpd_reset has no such time of day",
        ),
        (
            {"providers": {"gemini": {"rpd_reset": "00:00 Mars/Base"}}},
            r"unknown time zone 'Mars/Base'",
        ),
        (
            {"providers": {"gemini": {"tpm_counts": "output"}}},
            r"providers.gemini.tpm_counts must be",
        ),
        ({"providers": {"groq": 5}}, r"providers.groq must be a table"),
        (
            {"service": {"max_tokens_per_call": 0}},
            r"service.max_tokens_per_call must be a positive",
        ),
        (
            {"service": {"allow_unknown_providers": "yes"}},
            r"allow_unknown_providers must be true or false",
        ),
        (
            {"service": {"colour": "blue"}},
            r"\[service\] has an unknown setting 'colour'",
        ),
        ({"extra": {}}, r"the top level has an unknown setting 'extra'"),
    ],
)
def test_config_rejects_bad_setting_naming_it(document, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_document(document)


def test_config_rejects_bad_env_override():
    with pytest.raises(
        ConfigError, match="LLM_METRICS_MAX_TOKENS_PER_CALL must be a positive"
    ):
        settings_from_document({}, {"LLM_METRICS_MAX_TOKENS_PER_CALL": "-3"})


def test_config_rejects_file_that_is_not_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[providers.groq\nrpm = 1\n")

    with pytest.raises(ConfigError, match="is not TOML"):
        load_settings(path)


def test_config_rejects_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "[providers.groq]\nrpm = -1\n",
            "providers.groq.rpm must be a positive integer, got -1",
        ),
        ('[providers.groq]\nrpd_reset = "noon"\n', "providers.groq.rpd_reset must be"),
        ("[providers.groq]\nquota = 5\n", "unknown setting 'quota'"),
        ("[providers.GROQ]\n", "'GROQ' is not a valid provider name"),
    ],
)
def test_gunicorn_refuses_to_start_with_bad_config(tmp_path, body, message):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    env = {
        "PATH": "/usr/bin:/bin",
        "LLM_METRICS_CONFIG": str(config),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc"),
    }

    result = subprocess.run(
        [*GUNICORN, "--bind", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode != 0
    assert "Invalid configuration" in result.stderr
    assert message in result.stderr
    assert "Listening at" not in result.stderr


def test_daily_reset_finds_last_midnight_in_zone():
    reset = (
        settings_from_document(
            {"providers": {"gemini": {"rpd_reset": "00:00 America/Los_Angeles"}}}
        )
        .providers["gemini"]
        .rpd_reset
    )
    # 2026-07-01 06:59:59 UTC is 23:59:59 on June 30 in Los Angeles (UTC-7).
    before_midnight = 1782889199.0

    last = reset.last_reset(before_midnight)
    after = reset.last_reset(before_midnight + 2)

    assert last == 1782802800.0  # 2026-06-30 00:00 PDT
    assert after == 1782889200.0  # 2026-07-01 00:00 PDT


def test_daily_reset_keeps_local_midnight_across_daylight_saving():
    reset = DailyReset(
        0,
        0,
        load_settings(ROOT / "config" / "service.toml")
        .providers["gemini"]
        .rpd_reset.zone,
    )
    # 2026-11-01 is the autumn change in Los Angeles: that day lasts 25 hours.
    # 2026-11-02 07:30 UTC is 2026-11-01 23:30 PST.
    late_that_day = 1793604600.0

    last = reset.last_reset(late_that_day)

    assert late_that_day - last == 24.5 * 3600  # midnight PDT, 24.5 h earlier
