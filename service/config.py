"""Read and validate the service configuration.

Settings come from three places, later ones winning: the built-in defaults
below, the TOML file (``config/service.toml`` or the path in
``LLM_METRICS_CONFIG``), then environment variables. Everything is checked
once, at start-up, so that a bad setting stops the service with a sentence
that names it instead of failing on the first request.
"""

from __future__ import annotations

import datetime
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CONFIG_ENV = "LLM_METRICS_CONFIG"
INGEST_TOKEN_ENV = "LLM_METRICS_INGEST_TOKEN"
SCRAPE_TOKEN_ENV = "LLM_METRICS_SCRAPE_TOKEN"
MAX_TOKENS_ENV = "LLM_METRICS_MAX_TOKENS_PER_CALL"
ALLOW_UNKNOWN_ENV = "LLM_METRICS_ALLOW_UNKNOWN_PROVIDERS"

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "service.toml"

PROVIDER_NAME = re.compile(r"[a-z0-9._-]{1,64}")
QUOTA_TYPES = ("rpm", "rpd", "tpm")
TPM_COUNTS = ("total", "input")

_SERVICE_KEYS = {
    "max_tokens_per_call",
    "allow_unknown_providers",
    "quota_minute_window_seconds",
    "quota_day_window_seconds",
}
_PROVIDER_KEYS = {*QUOTA_TYPES, "tpm_counts", "rpd_reset"}
_RESET_TIME = re.compile(r"(\d{2}):(\d{2}) (\S+)")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range."""


@dataclass(frozen=True)
class DailyReset:
    """A time of day, in a time zone, at which a daily quota starts again."""

    hour: int
    minute: int
    zone: ZoneInfo

    def last_reset(self, now: float) -> float:
        """Return the Unix time of the latest reset at or before ``now``."""
        local_now = datetime.datetime.fromtimestamp(now, self.zone)
        reset = local_now.replace(
            hour=self.hour, minute=self.minute, second=0, microsecond=0
        )

        if reset > local_now:
            reset = _previous_day(reset)

        return reset.timestamp()

    def __str__(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d} {self.zone.key}"


def _previous_day(moment: datetime.datetime) -> datetime.datetime:
    # Step back on the calendar, not by 24 hours, so that a reset at 00:00
    # stays at 00:00 across a daylight-saving change.
    day = moment.date() - datetime.timedelta(days=1)
    return moment.replace(year=day.year, month=day.month, day=day.day)


@dataclass(frozen=True)
class ProviderQuota:
    """The free-tier limits of one provider; ``None`` means no limit."""

    name: str
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpm_counts: Literal["total", "input"] = "total"
    rpd_reset: DailyReset | None = None

    def limit(self, quota_type: str) -> int | None:
        """Return the configured limit of ``quota_type``, or ``None``."""
        value: int | None = getattr(self, quota_type)
        return value

    @property
    def has_limits(self) -> bool:
        return any(self.limit(quota_type) for quota_type in QUOTA_TYPES)


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know, validated."""

    providers: Mapping[str, ProviderQuota] = field(default_factory=dict)
    max_tokens_per_call: int = 10_000_000
    allow_unknown_providers: bool = False
    quota_minute_window_seconds: float = 60.0
    quota_day_window_seconds: float = 86_400.0
    ingest_token: str | None = None
    scrape_token: str | None = None
    source: str = "built-in defaults"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from the config file and the environment."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)

    try:
        with path.open("rb") as config_file:
            document = tomllib.load(config_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"The config file {str(path)!r} does not exist.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The config file {str(path)!r} is not TOML: {exc}.") from exc

    return settings_from_document(document, environ, source=str(path))


def settings_from_document(
    document: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    source: str = "a config document",
) -> Settings:
    """Validate a parsed config document and apply environment overrides."""
    environ = {} if environ is None else environ
    _reject_unknown(document, {"service", "providers"}, "the top level")

    service = _table(document, "service")
    _reject_unknown(service, _SERVICE_KEYS, "[service]")
    providers = _table(document, "providers")

    max_tokens = _positive_int(service, "max_tokens_per_call", "service", None)
    max_tokens = max_tokens or Settings.max_tokens_per_call
    if MAX_TOKENS_ENV in environ:
        max_tokens = _int_from_env(environ, MAX_TOKENS_ENV)

    allow_unknown = service.get("allow_unknown_providers", False)
    if not isinstance(allow_unknown, bool):
        raise ConfigError(
            "service.allow_unknown_providers must be true or false, "
            f"got {allow_unknown!r}."
        )
    if ALLOW_UNKNOWN_ENV in environ:
        allow_unknown = _bool_from_env(environ, ALLOW_UNKNOWN_ENV)

    return Settings(
        providers={name: _provider(name, table) for name, table in _tables(providers)},
        max_tokens_per_call=max_tokens,
        allow_unknown_providers=allow_unknown,
        quota_minute_window_seconds=_window(service, "quota_minute_window_seconds", 60),
        quota_day_window_seconds=_window(service, "quota_day_window_seconds", 86_400),
        ingest_token=environ.get(INGEST_TOKEN_ENV) or None,
        scrape_token=environ.get(SCRAPE_TOKEN_ENV) or None,
        source=source,
    )


def _provider(name: str, table: Mapping[str, Any]) -> ProviderQuota:
    if not PROVIDER_NAME.fullmatch(name):
        raise ConfigError(
            f"providers.{name!r} is not a valid provider name: use 1 to 64 "
            "lowercase letters, digits, '.', '_' or '-'."
        )
    _reject_unknown(table, _PROVIDER_KEYS, f"[providers.{name}]")
    where = f"providers.{name}"

    tpm_counts = table.get("tpm_counts", "total")
    if tpm_counts not in TPM_COUNTS:
        raise ConfigError(
            f'{where}.tpm_counts must be "total" or "input", got {tpm_counts!r}.'
        )

    reset_text = table.get("rpd_reset")
    rpd_reset = None if reset_text is None else _daily_reset(reset_text, where)

    return ProviderQuota(
        name=name,
        rpm=_positive_int(table, "rpm", where, None),
        rpd=_positive_int(table, "rpd", where, None),
        tpm=_positive_int(table, "tpm", where, None),
        tpm_counts=tpm_counts,
        rpd_reset=rpd_reset,
    )


def _daily_reset(text: object, where: str) -> DailyReset:
    expected = 'a time and an IANA zone such as "00:00 America/Los_Angeles"'
    match = _RESET_TIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{where}.rpd_reset must be {expected}, got {text!r}.")

    hour, minute, zone_name = int(match[1]), int(match[2]), match[3]
    if hour > 23 or minute > 59:
        raise ConfigError(f"{where}.rpd_reset has no such time of day: {text!r}.")

    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"{where}.rpd_reset names an unknown time zone {zone_name!r}."
        ) from exc

    return DailyReset(hour=hour, minute=minute, zone=zone)


def _positive_int(
    table: Mapping[str, Any], key: str, where: str, default: int | None
) -> int | None:
    value = table.get(key, default)
    if value is None:
        return None

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}.")

    return value


def _window(table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(
            f"service.{key} must be a positive number of seconds, got {value!r}."
        )

    return float(value)


def _int_from_env(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {text!r}.")

    return int(text)


def _bool_from_env(environ: Mapping[str, str], name: str) -> bool:
    text = environ[name].strip().lower()
    if text in {"1", "true", "yes"}:
        return True
    if text in {"0", "false", "no"}:
        return False

    raise ConfigError(f"{name} must be true or false, got {environ[name]!r}.")


def _table(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table, got {value!r}.")

    return value


def _tables(providers: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for name, value in providers.items():
        if not isinstance(value, dict):
            raise ConfigError(
                f"providers.{name} must be a table such as [providers.{name}], "
                f"got {value!r}."
            )
        tables.append((name, value))

    return tables


def _reject_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where} has an unknown setting {unknown[0]!r}; "
            f"known settings are {', '.join(sorted(known))}."
        )
