"""Quota usage: how much of each configured limit this host has used.

Usage is computed when it is read, not when calls are recorded. Each worker
counts its calls in time slots (``service.quota_windows``); a scrape, or
``GET /v1/quota``, adds up the slots of every worker's file that lie inside
the window and divides by the limit. The answer is therefore current at the
moment of the scrape: a window that passed with no calls reads 0, and the
calls of a worker that exited or was killed count until they leave their
window.

Why ``llm_quota_usage_percent`` is a ``mostrecent`` gauge, and not ``livesum``
or ``max`` as first planned: a gauge in multiprocess mode is a value per
worker file, and the modes say how those values are combined.

- ``livesum`` of each worker's own share drops the share of a worker that
  has died, yet its calls still count against the provider's quota; and a
  worker's share only changes when that worker runs, so an idle worker
  keeps reporting calls that have left the window.
- ``max`` (or ``livemax``) of host-wide values written at different moments
  keeps the highest of them, so an old peak stays after the window has
  slid past it.

The scraping worker computes the host-wide value from the shared windows and
sets it in its own file just before the files are merged. ``mostrecent``
takes the value with the newest timestamp, which is that one, so every
scrape reports usage as of now, whichever worker answers. Across hosts,
each host's directory holds only the calls made through it, so each host
reports the usage it caused, and
``sum by (provider, quota_type) (llm_quota_usage_percent)`` is the fleet's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service import metrics
from service.config import QUOTA_TYPES, Settings
from service.multiproc_dir import directory_lock
from service.window_format import parse_file, window_files


@dataclass(frozen=True)
class QuotaUsage:
    """The usage of one limit of one provider."""

    provider: str
    quota_type: str
    used: int
    limit: int

    @property
    def percent(self) -> float:
        return self.used / self.limit * 100


@dataclass
class WindowCounts:
    """One provider's counts over every file, from the slots that start in time.

    ``minute_from`` and ``day_from`` are the earliest slot starts, in
    microseconds, that still belong to the minute and the day window;
    ``until`` is the moment measured, after which no slot counts.
    """

    minute_from: int
    day_from: int
    until: int
    minute_requests: int = 0
    minute_tokens: int = 0
    day_requests: int = 0


def measure_usage(
    settings: Settings, directory: Path, now: float | None = None
) -> list[QuotaUsage]:
    """Add up every worker's calls inside the current windows, per limit."""
    now = time.time() if now is None else now
    counts = _empty_counts(settings, now)
    if not counts:
        return []

    # The shared lock keeps a dead worker's file from being folded into the
    # archive between the listing and the reads, which would count it twice
    # or not at all.
    with directory_lock(directory, exclusive=False):
        for path in window_files(directory):
            add_file_counts(path.read_bytes(), counts)

    return _usages(settings, counts)


def refresh_gauge(settings: Settings, directory: Path) -> list[QuotaUsage]:
    """Set ``llm_quota_usage_percent`` to the usage of now; return the usage."""
    usages = measure_usage(settings, directory)
    if metrics.PROMETHEUS_AVAILABLE:
        for usage in usages:
            gauge = metrics.llm_quota_usage_percent.labels(
                usage.provider, usage.quota_type
            )
            gauge.set(usage.percent)

    return usages


def _empty_counts(settings: Settings, now: float) -> dict[str, WindowCounts]:
    now_us = int(now * 1_000_000)
    minute_from = now_us - int(settings.quota_minute_window_seconds * 1_000_000) + 1
    rolling_day_from = now_us - int(settings.quota_day_window_seconds * 1_000_000) + 1

    counts = {}
    for name, provider in settings.providers.items():
        if not provider.has_limits:
            continue

        day_from = rolling_day_from
        if provider.rpd_reset is not None:
            day_from = int(provider.rpd_reset.last_reset(now) * 1_000_000)
        counts[name] = WindowCounts(minute_from, day_from, until=now_us)

    return counts


def _usages(settings: Settings, counts: dict[str, WindowCounts]) -> list[QuotaUsage]:
    usages = []
    for name, provider_counts in counts.items():
        used = {
            "rpm": provider_counts.minute_requests,
            "rpd": provider_counts.day_requests,
            "tpm": provider_counts.minute_tokens,
        }
        for quota_type in QUOTA_TYPES:
            limit = settings.providers[name].limit(quota_type)
            if limit is not None:
                usages.append(QuotaUsage(name, quota_type, used[quota_type], limit))

    return usages


def add_file_counts(data: bytes, counts: Mapping[str, WindowCounts]) -> None:
    """Add the slots of one file that are still inside their windows to ``counts``."""
    parsed = parse_file(data)
    if parsed is None:
        return

    layout, offsets = parsed
    words = memoryview(data).cast("q")
    for name, offset in offsets.items():
        provider_counts = counts.get(name)
        if provider_counts is None:
            continue

        base = layout.minute_ring(offset)
        minute_end = layout.day_ring(offset)
        minute_from, until = provider_counts.minute_from, provider_counts.until
        starts = words[base:minute_end:3].tolist()
        requests = words[base + 1 : minute_end : 3].tolist()
        tokens = words[base + 2 : minute_end : 3].tolist()
        for start, slot_requests, slot_tokens in zip(
            starts, requests, tokens, strict=True
        ):
            if minute_from <= start <= until:
                provider_counts.minute_requests += slot_requests
                provider_counts.minute_tokens += slot_tokens

        day_end = minute_end + 2 * layout.day_slots
        day_from = provider_counts.day_from
        starts = words[minute_end:day_end:2].tolist()
        requests = words[minute_end + 1 : day_end : 2].tolist()
        provider_counts.day_requests += sum(
            slot_requests
            for start, slot_requests in zip(starts, requests, strict=True)
            if day_from <= start <= until
        )

    words.release()
