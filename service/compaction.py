"""Fold the files of a worker that has exited into archive files.

Every worker leaves ``counter_<pid>.db``, ``histogram_<pid>.db``,
``gauge_mostrecent_<pid>.db`` and ``quota_<pid>.win`` behind when it exits.
Left alone, a service whose workers recycle gathers thousands of them and
every scrape reads them all. The arbiter's ``child_exit`` hook therefore
folds a dead worker's files into one archive per file kind
(``counter_archive.db``, ...), so the directory holds the live workers'
files plus a few archives, however often workers recycle.

What a fold guarantees, and why:

- Each event is counted exactly once at every scrape. The new archive is
  built under a temporary name that no reader lists; then, under the
  exclusive directory lock, it replaces the old archive and the dead files
  are removed. Readers list and read under the shared lock, so they see the
  directory wholly before or wholly after the fold.
- Only the arbiter folds, one worker at a time, and only after the worker
  has been reaped, so a dead worker's files no longer change and no new
  worker can have taken its pid yet.
- How each kind is combined: counters, histograms and summaries are added
  key by key; a ``mostrecent`` gauge keeps the value with the newest
  timestamp, ``max``/``min`` gauges keep the largest/smallest and ``sum``
  gauges add. ``all`` gauges carry the pid as a label, so their files are
  left as they are; ``live*`` gauges are removed by ``mark_process_dead``.
- Quota windows are merged slot by slot (``service.quota_windows``): a dead
  worker's calls keep counting until they leave their window.

A fold cannot survive everything. If the arbiter is killed between the
replacement of the archives and the removal of the dead files, a scrape in
the moment before the orphaned workers exit can count that worker twice;
the next start empties the directory. A window file whose slot layout
differs from the archive's (the window lengths were changed and Gunicorn
reloaded) is not folded and stays in place, still read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

from service.multiproc_dir import directory_lock
from service.window_format import FILE_PREFIX, FILE_SUFFIX, merge_window_files

logger = logging.getLogger(__name__)

ARCHIVE_ID = "archive"

# (value, timestamp) pairs of one key, from the archive and a dead file.
_Entry = tuple[float, float]
_Combine = Callable[[_Entry, _Entry], _Entry]


def _add(kept: _Entry, new: _Entry) -> _Entry:
    return kept[0] + new[0], max(kept[1], new[1])


def _newest(kept: _Entry, new: _Entry) -> _Entry:
    return new if new[1] >= kept[1] else kept


def _largest(kept: _Entry, new: _Entry) -> _Entry:
    return new if new[0] > kept[0] else kept


def _smallest(kept: _Entry, new: _Entry) -> _Entry:
    return new if new[0] < kept[0] else kept


# How the values of one key combine, by file prefix (the part before the pid).
COMBINE_BY_PREFIX: dict[str, _Combine] = {
    "counter": _add,
    "histogram": _add,
    "summary": _add,
    "gauge_sum": _add,
    "gauge_max": _largest,
    "gauge_min": _smallest,
    "gauge_mostrecent": _newest,
}


@dataclass(frozen=True)
class FoldResult:
    """What one fold did: the files removed and the files left in place."""

    folded: list[str]
    kept: list[str]


def fold_dead_worker(directory: Path, pid: int) -> FoldResult:
    """Fold the files of the exited worker ``pid`` into the archives."""
    replacements: list[tuple[Path, Path]] = []
    folded: list[Path] = []
    kept: list[Path] = []

    for path in sorted(directory.glob(f"*_{pid}.db")):
        prefix = path.name[: -len(f"_{pid}.db")]
        combine = COMBINE_BY_PREFIX.get(prefix)
        if combine is None:
            kept.append(path)
            continue

        archive = directory / f"{prefix}_{ARCHIVE_ID}.db"
        replacements.append((_write_metric_archive(archive, path, combine), archive))
        folded.append(path)

    window_archive = directory / f"{FILE_PREFIX}{ARCHIVE_ID}{FILE_SUFFIX}"
    merged = window_archive.read_bytes() if window_archive.exists() else None
    merged_any = False
    for path in _window_files_of(directory, pid):
        merged_with_path = merge_window_files(merged, path.read_bytes())
        if merged_with_path is None:
            kept.append(path)
            continue

        merged, merged_any = merged_with_path, True
        folded.append(path)

    if merged is not None and merged_any:
        staged = window_archive.with_name(window_archive.name + ".tmp")
        staged.write_bytes(merged)
        replacements.append((staged, window_archive))

    _commit(directory, replacements, folded)
    return FoldResult([path.name for path in folded], [path.name for path in kept])


def _window_files_of(directory: Path, pid: int) -> list[Path]:
    # quota_<pid>.win, and quota_<pid>-<n>.win set aside after a reload.
    own = directory / f"{FILE_PREFIX}{pid}{FILE_SUFFIX}"
    aside = directory.glob(f"{FILE_PREFIX}{pid}-*{FILE_SUFFIX}")
    return sorted([own, *aside]) if own.exists() else sorted(aside)


def _write_metric_archive(archive: Path, dead: Path, combine: _Combine) -> Path:
    """Write the archive combined with ``dead`` under a temporary name."""
    entries: dict[str, _Entry] = {}
    for source in (archive, dead):
        if not source.exists():
            continue

        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(
            str(source)
        ):
            new = (value, timestamp)
            entries[key] = combine(entries[key], new) if key in entries else new

    staged = archive.with_name(archive.name + ".tmp")
    staged.unlink(missing_ok=True)
    staged_dict = MmapedDict(str(staged))
    try:
        for key, (value, timestamp) in entries.items():
            staged_dict.write_value(key, value, timestamp)
    finally:
        staged_dict.close()

    return staged


def _commit(
    directory: Path, replacements: list[tuple[Path, Path]], folded: list[Path]
) -> None:
    # Renames and removals only: the lock is held for microseconds, and
    # scrapes wait for it no longer than that.
    with directory_lock(directory, exclusive=True):
        for staged, archive in replacements:
            os.replace(staged, archive)
        for path in folded:
            path.unlink()
