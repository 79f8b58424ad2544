"""The layout of the quota window files, and the operations on whole files.

A window file holds one worker's time slots (``service.quota_windows``
writes them; ``service.quota`` reads them). All numbers are little-endian
64-bit integers after an 8-byte magic:

- header: magic, record count, minute slots, day slots, minute slot width
  and day slot width (microseconds);
- one record per provider with limits: its name in 64 bytes, then the
  minute ring (start, requests, tokens per slot) and the day ring (start,
  requests per slot).

Slots carry their start time rather than an index, so that a reader needs no
clock agreement beyond the wall clock the host shares, and two files of the
same layout can be merged slot by slot.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings

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

    def record_offset(self, index: int) -> int:
        """Return the word offset of the record at ``index``."""
        return HEADER.size // 8 + index * self.record_words

    def record_offsets(self, names: Iterable[str]) -> dict[str, int]:
        """Return the word offset of each named record, in file order."""
        return {name: self.record_offset(index) for index, name in enumerate(names)}

    def minute_ring(self, record_offset: int) -> int:
        """Return where a record's minute ring starts (start, requests, tokens)."""
        return record_offset + NAME_BYTES // 8

    def day_ring(self, record_offset: int) -> int:
        """Return the word offset of a record's day ring (start, requests)."""
        return self.minute_ring(record_offset) + 3 * self.minute_slots


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
    for name, offset in layout.record_offsets(names).items():
        position = offset * 8
        content[position : position + NAME_BYTES] = name.encode().ljust(
            NAME_BYTES, b"\0"
        )

    return content


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
        offset = layout.record_offset(index)
        name = data[offset * 8 : offset * 8 + NAME_BYTES].rstrip(b"\0")
        offsets[name.decode(errors="replace")] = offset

    return layout, offsets


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
        (
            layout.minute_ring(offset),
            layout.minute_ring(target_offset),
            3,
            layout.minute_slots,
        ),
        (layout.day_ring(offset), layout.day_ring(target_offset), 2, layout.day_slots),
    )
    for source_ring, target_ring, width, slots in rings:
        for slot in range(slots):
            source_index = source_ring + slot * width
            start = source[source_index]
            if start == 0:
                continue

            target_index = target_ring + slot * width
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
