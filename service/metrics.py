"""The token and quota metrics, and the two calls that record them.

``record_tokens`` is what the HTTP API calls for each usage item, and what an
application running inside the same Gunicorn calls after each LLM call.
Without prometheus_client installed, ``PROMETHEUS_AVAILABLE`` is false, the
metric objects are ``None`` and both calls do nothing.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from service.config import PROVIDER_NAME, QUOTA_TYPES, Settings, load_settings
from service.mmap_values import direct_writer
from service.multiproc_dir import shared_directory
from service.quota_windows import QuotaWindows
from service.validation import UsageItem, check_provider, check_tokens

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError:  # pragma: no cover - exercised in a subprocess test
    PROMETHEUS_AVAILABLE = False
else:
    PROMETHEUS_AVAILABLE = True

logger = logging.getLogger(__name__)

TOKEN_BUCKETS = (100, 500, 1000, 2000, 5000, 10000)
TOKEN_TYPES = ("input", "output")

# The metrics live in a registry of their own rather than prometheus_client's
# global one: in multiprocess mode /metrics reads the workers' files instead,
# and the global registry's process metrics would describe one worker only.
registry: Any = None
llm_tokens_consumed: Any = None
llm_tokens_total: Any = None
llm_quota_usage_percent: Any = None

if PROMETHEUS_AVAILABLE:
    registry = CollectorRegistry(auto_describe=True)
    llm_tokens_consumed = Histogram(
        "llm_tokens_consumed",
        "Tokens of one LLM call, by provider and type (input or output).",
        ["provider", "type"],
        buckets=TOKEN_BUCKETS,
        registry=registry,
    )
    llm_tokens_total = Counter(
        "llm_tokens_total",
        "Tokens consumed, by provider and type (input or output).",
        ["provider", "type"],
        registry=registry,
    )
    # "mostrecent": the value set last on this host wins, whichever worker
    # set it; service.quota explains why no other mode gives right numbers.
    llm_quota_usage_percent = Gauge(
        "llm_quota_usage_percent",
        "Usage of a provider's configured quota (rpm, rpd, tpm), in percent.",
        ["provider", "quota_type"],
        multiprocess_mode="mostrecent",
        registry=registry,
    )


_SeriesWriter = Callable[[int, int], None]


class CallWindows(Protocol):
    """Where a recorded call also counts towards the provider's quota windows."""

    def add_call(self, provider: str, input_tokens: int, output_tokens: int) -> None:
        """Count one call and its tokens in the current windows."""


class TokenRecorder:
    """Record calls into the metrics, resolving each provider's series once.

    Looking up label children costs more than the recording itself, so each
    provider's four children are resolved on its first call and a writer for
    them is kept; in multiprocess mode that writer puts the six values
    straight into the worker's files (``service.mmap_values``).
    """

    def __init__(self, settings: Settings, windows: CallWindows | None = None):
        self.settings = settings
        self.windows = windows
        self._writers: dict[str, _SeriesWriter] = {}
        self._lock = threading.Lock()
        # A forked child must not write through its parent's file mappings.
        os.register_at_fork(after_in_child=self._writers.clear)

    def record(self, provider: str, input_tokens: int, output_tokens: int) -> None:
        """Check one call's arguments, then record it."""
        if provider not in self._writers:
            check_provider(provider, self.settings)
        check_tokens(input_tokens, self.settings, "input_tokens")
        check_tokens(output_tokens, self.settings, "output_tokens")

        self._record(provider, input_tokens, output_tokens)

    def record_items(self, items: Iterable[UsageItem]) -> None:
        """Record usage items that ``service.validation`` has already checked."""
        for item in items:
            self._record(item.provider, item.input_tokens, item.output_tokens)

    def prepare_series(self) -> None:
        """Create every configured provider's series at zero, if not done yet.

        Prometheus's ``increase()`` and ``rate()`` start from a series' first
        sample: a series that appears with its first call would not count
        that call. Called before each scrape, so the cost is one comparison.
        """
        if len(self._writers) >= len(self.settings.providers):
            return

        for provider in self.settings.providers:
            if provider not in self._writers:
                self._add_provider(provider)

    def _record(self, provider: str, input_tokens: int, output_tokens: int) -> None:
        write = self._writers.get(provider) or self._add_provider(provider)
        write(input_tokens, output_tokens)

        if self.windows is not None:
            self.windows.add_call(provider, input_tokens, output_tokens)

    def _add_provider(self, provider: str) -> _SeriesWriter:
        with self._lock:
            children = (
                llm_tokens_consumed.labels(provider, "input"),
                llm_tokens_consumed.labels(provider, "output"),
                llm_tokens_total.labels(provider, "input"),
                llm_tokens_total.labels(provider, "output"),
            )
            direct = direct_writer(*children)
            write = direct.record if direct else _public_writer(*children)
            self._writers[provider] = write

        logger.debug("Created series for provider (provider: %s)", provider)
        return write


def _public_writer(
    input_child: Any, output_child: Any, input_total: Any, output_total: Any
) -> _SeriesWriter:
    """Return a writer that goes through prometheus_client's public API."""

    def write(input_tokens: int, output_tokens: int) -> None:
        input_child.observe(input_tokens)
        output_child.observe(output_tokens)
        input_total.inc(input_tokens)
        output_total.inc(output_tokens)

    return write


_recorder: TokenRecorder | None = None
_recorder_lock = threading.Lock()


def configure(settings: Settings, windows: CallWindows | None = None) -> None:
    """Set the settings and quota windows that the module-level calls use.

    Without ``windows``, calls count towards quotas in this process's shared
    directory (``service.multiproc_dir.shared_directory``).
    """
    global _recorder  # noqa: PLW0603 - one recorder per process, by design
    if not PROMETHEUS_AVAILABLE:
        _recorder = None
        return

    if windows is None:
        windows = QuotaWindows(settings, shared_directory())
    _recorder = TokenRecorder(settings, windows)


def current_recorder() -> TokenRecorder | None:
    """Return this process's recorder, loading the settings on first use."""
    if _recorder is None and PROMETHEUS_AVAILABLE:
        with _recorder_lock:
            if _recorder is None:
                configure(load_settings())

    return _recorder


def record_tokens(provider: str, input_tokens: int, output_tokens: int) -> None:
    """Record one LLM call: its input and output tokens and its quota share.

    Raises ``ValueError`` for an unknown provider or a token count that is not
    an integer in range; does nothing without prometheus_client.
    """
    recorder = _recorder or current_recorder()
    if recorder is not None:
        recorder.record(provider, input_tokens, output_tokens)


def update_quota_usage(provider: str, quota_type: str, usage_percent: float) -> None:
    """Set ``llm_quota_usage_percent`` for one provider and quota type.

    The service sets this gauge itself, from the recorded calls, for every
    provider with a configured limit; this call is for usage known elsewhere
    (a provider's rate-limit headers, say). Does nothing without
    prometheus_client.
    """
    if not PROMETHEUS_AVAILABLE:
        return

    if not isinstance(provider, str) or not PROVIDER_NAME.fullmatch(provider):
        raise ValueError(
            "provider must be 1 to 64 lowercase letters, digits, '.', '_' or '-', "
            f"got {provider!r}."
        )

    if quota_type not in QUOTA_TYPES:
        raise ValueError(
            f"quota_type must be one of rpm, rpd or tpm, got {quota_type!r}."
        )

    valid_number = isinstance(usage_percent, int | float) and not isinstance(
        usage_percent, bool
    )
    if not valid_number or not math.isfinite(usage_percent) or usage_percent < 0:
        raise ValueError(
            "usage_percent must be a finite number of at least 0, "
            f"got {usage_percent!r}."
        )

    llm_quota_usage_percent.labels(provider, quota_type).set(usage_percent)
