"""Per-worker files that count each provider's calls and tokens in time slots.

Quota usage is a sliding count ("requests in the last 60 seconds"), so a
number that only changes when its own worker records cannot follow it, and
counters alone cannot say what happened inside a window. Each worker
therefore keeps, next to prometheus_client's files, a ``quota_<pid>.win``
file of time slots: one writer per file, as prometheus_client does, so
recording takes no lock between processes. A scrape adds the slots of every
file that fall inside the window, whichever worker wrote them and whether
that worker still lives.

Layout, all little-endian 64-bit integers after an 8-byte magic:

- header: magic, record count, minute slots, day slots, minute slot width
  and day slot width (microseconds);
- one record per provider with limits: its name in 64 bytes, then the
  minute ring (start, requests, tokens per slot) and the day ring (start,
  requests per slot).

A slot is reused when its time comes round again: the writer sees a start
that is not the current one and zeroes the slot first. Slots carry their
start time rather than an index, so that a reader needs no clock agreement
beyond the wall clock the host shares.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.multiproc_dir import directory_lock

MAGIC = b"LTMQW001"
HEADER = struct.Struct("<8s5q")
NAME_BYTES = 64
MINUTE_SLOTS = 60
# 25 hours of one-minute slots: enough for a daily quota whose day is
# lengthened to 25 hours by a daylight-saving change.
DAY_SLOTS = 1500
DAY_WINDOW_SLOTS = 1440
FILE_PREFIX = "quota_"
FILE_SUFFIX = ".win"

Clock = Callable[[], float]


@dataclass(frozen=True)
class Layout:
    """The shape of a window file: how many slots of what width."""

    minute_slot_us: int
    day_slot_us: int
    minute_slots: int = MINUTE_SLOTS
    day_slots: int = DAY_SLOTS

    @classmethod
    def from_settings(cls, settings: Settings) -> Layout:
        minute_us = int(settings.quota_minute_window_seconds * 1_000_000)
        day_us = int(settings.quota_day_window_seconds * 1_000_000)
        return cls(
            minute_slot_us=max(1, minute_us // MINUTE_SLOTS),
            day_slot_us=max(1, day_us // DAY_WINDOW_SLOTS),
        )

    @property
    def record_words(self) -> int:
        """Return the size of one provider's record in 8-byte words."""
        return NAME_BYTES // 8 + 3 * self.minute_slots + 2 * self.day_slots

    def file_size(self, records: int) -> int:
        return HEADER.size + records * self.record_words * 8

    def record_offsets(self, names: Iterable[str]) -> dict[str, int]:
        """Return the word offset of each named record, in file order."""
        return {
            name: HEADER.size // 8 + index * self.record_words
            for index, name in enumerate(names)
        }


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


class WindowFile:
    """A window file mapped into memory; the writer side lives in this process."""

    def __init__(self, path: Path, layout: Layout, providers: Iterable[str]):
        self.path = path
        self.layout = layout
        self.names = list(providers)
        self.offsets = layout.record_offsets(self.names)
        # What add() needs per provider, unpacked in one step on each call.
        self.rings = {
            name: (
                offset + NAME_BYTES // 8,
                layout.minute_slot_us,
                layout.minute_slots,
                layout.day_slot_us,
                layout.day_slots,
            )
            for name, offset in self.offsets.items()
        }
        self._map = _create_or_open(path, layout, self.names)
        self.words = memoryview(self._map).cast("q")

    def add(self, provider: str, now_us: int, tokens: int) -> None:
        """Count one request and its tokens in the current slots of ``provider``."""
        words = self.words
        minute_ring, minute_us, minute_slots, day_us, day_slots = self.rings[provider]

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
        index = minute_ring + 3 * minute_slots + 2 * (slot % day_slots)
        if words[index] != start:
            words[index + 1] = 0
            words[index] = start
        words[index + 1] += 1

    def close(self) -> None:
        self.words.release()
        self._map.close()


def _create_or_open(path: Path, layout: Layout, names: list[str]) -> mmap.mmap:
    """Map this worker's file, made whole before it is visible under its name."""
    # Exclusive, because a file of another shape is renamed here, and a
    # reader between its listing and its read would miss it.
    with directory_lock(path.parent, exclusive=True):
        return _create_or_open_locked(path, layout, names)


def _create_or_open_locked(path: Path, layout: Layout, names: list[str]) -> mmap.mmap:
    if path.exists() and read_names(path, layout) == names:
        # A worker that got a dead worker's pid before its file was folded
        # away goes on counting in it; nothing is lost or counted twice.
        return _map_file(path)

    if path.exists():
        # A file of another shape (a reload changed the providers): keep it
        # for the readers under another name and start a new one.
        path.rename(path.with_name(f"{path.stem}-{time.time_ns()}{FILE_SUFFIX}"))

    write_whole(path, empty_file(layout, names))
    return _map_file(path)


def empty_file(layout: Layout, names: list[str]) -> bytearray:
    """Return the bytes of a window file with ``names`` and no counts."""
    content = bytearray(layout.file_size(len(names)))
    HEADER.pack_into(
        content,
        0,
        MAGIC,
        len(names),
        layout.minute_slots,
        layout.day_slots,
        layout.minute_slot_us,
        layout.day_slot_us,
    )
    for index, name in enumerate(names):
        position = HEADER.size + index * layout.record_words * 8
        content[position : position + NAME_BYTES] = name.encode().ljust(
            NAME_BYTES, b"\0"
        )

    return content


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


def read_names(path: Path, layout: Layout) -> list[str] | None:
    """Return the provider names of a file of ``layout``, or ``None`` if it differs."""
    data = path.read_bytes()
    parsed = parse_file(data)
    if parsed is None or parsed[0] != layout:
        return None

    return list(parsed[1])


def parse_file(data: bytes | bytearray) -> tuple[Layout, dict[str, int]] | None:
    """Parse a window file's header: its layout and each record's word offset."""
    if len(data) < HEADER.size:
        return None

    magic, records, minute_slots, day_slots, minute_us, day_us = HEADER.unpack_from(
        data
    )
    layout = Layout(minute_us, day_us, minute_slots, day_slots)
    if magic != MAGIC or len(data) < layout.file_size(records):
        return None

    offsets = {}
    for index in range(records):
        position = HEADER.size + index * layout.record_words * 8
        name = (
            data[position : position + NAME_BYTES]
            .rstrip(b"\0")
            .decode(errors="replace")
        )
        offsets[name] = position // 8

    return layout, offsets


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

        base = offset + NAME_BYTES // 8
        minute_end = base + 3 * layout.minute_slots
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


def merge_window_files(archive: bytes | None, dead: bytes) -> bytes | None:
    """Merge a dead worker's window file into an archive, slot by slot.

    Return ``None`` when the two differ in layout, since slots of other
    widths cannot be added. Where both hold a slot of the same start, the
    counts add up; otherwise the newer slot wins, the older one having left
    its window already.
    """
    parsed_dead = parse_file(dead)
    if parsed_dead is None:
        return archive
    if archive is None:
        return dead

    parsed_archive = parse_file(archive)
    if parsed_archive is None or parsed_archive[0] != parsed_dead[0]:
        return None

    layout, archive_offsets = parsed_archive
    names = [*archive_offsets, *(n for n in parsed_dead[1] if n not in archive_offsets)]
    merged = empty_file(layout, names)
    target = memoryview(merged).cast("q")
    target_offsets = layout.record_offsets(names)
    for source_bytes, offsets in ((archive, archive_offsets), (dead, parsed_dead[1])):
        source = memoryview(source_bytes).cast("q")
        for name, offset in offsets.items():
            _merge_record(target, target_offsets[name], source, offset, layout)
        source.release()

    target.release()
    return bytes(merged)


def _merge_record(
    target: memoryview,
    target_offset: int,
    source: memoryview,
    offset: int,
    layout: Layout,
) -> None:
    rings = (
        (NAME_BYTES // 8, 3, layout.minute_slots),
        (NAME_BYTES // 8 + 3 * layout.minute_slots, 2, layout.day_slots),
    )
    for ring_start, width, slots in rings:
        for slot in range(slots):
            source_index = offset + ring_start + slot * width
            start = source[source_index]
            if start == 0:
                continue

            target_index = target_offset + ring_start + slot * width
            if target[target_index] == start:
                for field in range(1, width):
                    target[target_index + field] += source[source_index + field]
            elif start > target[target_index]:
                target[target_index : target_index + width] = source[
                    source_index : source_index + width
                ]


def window_files(directory: Path) -> list[Path]:
    """List every window file of the directory, live, dead or archived."""
    return sorted(
        path
        for path in directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}")
        if path.is_file()
    )


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
