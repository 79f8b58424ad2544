"""Per-worker files that count each provider's calls and tokens in time slots.

Quota usage is a sliding count ("requests in the last 60 seconds"), so a
number that only changes when its own worker records cannot follow it, and
counters alone cannot say what happened inside a window. Each worker
therefore keeps, next to prometheus_client's files, a ``quota_<pid>.win``
file of time slots (``service.window_format`` describes it): one writer per
file, as prometheus_client does, so recording takes no lock between
processes. A read adds the slots of every file that fall inside the window,
whichever worker wrote them and whether that worker still lives.

A slot is reused when its time comes round again: the writer sees a start
that is not the current one and zeroes the slot first.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from service.config import Settings
from service.multiproc_dir import directory_lock
from service.window_format import (
    FILE_PREFIX,
    FILE_SUFFIX,
    Layout,
    empty_file,
    parse_file,
)

Clock = Callable[[], float]


class WindowFile:
    """A window file mapped into memory; the writer side lives in this process."""

    def __init__(self, path: Path, layout: Layout, providers: Iterable[str]):
        names = list(providers)
        # What add() needs per provider, unpacked in one step on each call.
        self.rings = {
            name: (
                layout.minute_ring(offset),
                layout.minute_slot_us,
                layout.minute_slots,
                layout.day_ring(offset),
                layout.day_slot_us,
                layout.day_slots,
            )
            for name, offset in layout.record_offsets(names).items()
        }
        self.words = memoryview(_create_or_open(path, layout, names)).cast("q")

    def add(self, provider: str, now_us: int, tokens: int) -> None:
        """Count one request and its tokens in the current slots of ``provider``."""
        words = self.words
        minute_ring, minute_us, minute_slots, day_ring, day_us, day_slots = self.rings[
            provider
        ]

        slot = now_us // minute_us
        start = slot * minute_us
        index = minute_ring + 3 * (slot % minute_slots)
        if words[index] != start:
            # Zero the counts before the start changes, so that a reader
            # never sees the new start with the old slot's counts.
            words[index + 1] = 0
            words[index + 2] = 0
            words[index] = start
        words[index + 1] += 1
        words[index + 2] += tokens

        slot = now_us // day_us
        start = slot * day_us
        index = day_ring + 2 * (slot % day_slots)
        if words[index] != start:
            words[index + 1] = 0
            words[index] = start
        words[index + 1] += 1


def _create_or_open(path: Path, layout: Layout, names: list[str]) -> mmap.mmap:
    """Map this worker's file, made whole before it is visible under its name."""
    # Exclusive, because a file of another shape is renamed here, and a
    # reader between its listing and its read would miss it.
    with directory_lock(path.parent, exclusive=True):
        return _create_or_open_locked(path, layout, names)


def _create_or_open_locked(path: Path, layout: Layout, names: list[str]) -> mmap.mmap:
    existing = parse_file(path.read_bytes()) if path.exists() else None
    if existing is not None and existing[0] == layout and list(existing[1]) == names:
        # A worker that got a dead worker's pid before its file was folded
        # away goes on counting in it; nothing is lost or counted twice.
        return _map_file(path)

    if path.exists():
        # A file of another shape (a reload changed the providers): keep it
        # for the readers under another name and start a new one.
        path.rename(path.with_name(f"{path.stem}-{time.time_ns()}{FILE_SUFFIX}"))

    write_whole(path, empty_file(layout, names))
    return _map_file(path)


def write_whole(path: Path, content: bytes | bytearray) -> None:
    """Write ``path`` under a temporary name and rename it into place.

    A reader finds either no file or a whole one, never a file still being
    sized or filled.
    """
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def _map_file(path: Path) -> mmap.mmap:
    with path.open("r+b") as existing:
        return mmap.mmap(existing.fileno(), 0)


class QuotaWindows:
    """This process's side of the quota windows: adds each call to its own file.

    The file is opened on the first call, after Gunicorn has forked the
    worker, and dropped in a child forked later, so that no two processes
    ever write one file.
    """

    def __init__(
        self, settings: Settings, directory: Path, clock: Clock = time.time
    ) -> None:
        self.layout = Layout.from_settings(settings)
        self.directory = directory
        self.clock = clock
        self._token_counting = {
            name: provider.tpm_counts == "input"
            for name, provider in settings.providers.items()
            if provider.has_limits
        }
        self._file: WindowFile | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget_file)

    def add_call(self, provider: str, input_tokens: int, output_tokens: int) -> None:
        """Count one call of ``provider`` if it has limits."""
        input_only = self._token_counting.get(provider)
        if input_only is None:
            return

        tokens = input_tokens if input_only else input_tokens + output_tokens
        now_us = int(self.clock() * 1_000_000)
        with self._lock:
            window_file = self._file or self._open()
            window_file.add(provider, now_us, tokens)

    def _open(self) -> WindowFile:
        path = self.directory / f"{FILE_PREFIX}{os.getpid()}{FILE_SUFFIX}"
        self._file = WindowFile(path, self.layout, self._token_counting)
        return self._file

    def _forget_file(self) -> None:
        # The parent keeps writing its own file; this child starts its own.
        self._file = None
        self._lock = threading.Lock()
