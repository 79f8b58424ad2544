"""Merge the workers' metric files into one set of metrics for a scrape.

prometheus_client's own ``MultiProcessCollector`` reads every ``*.db`` file it
lists. Two things go wrong with it under Gunicorn: a file can vanish between
the listing and the read (raising ``FileNotFoundError``), and a worker that is
just starting creates its file before sizing it, so a read in that gap finds
too few bytes to parse. This collector lists and reads under the shared
directory lock, and passes over files that hold no values yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.multiproc_dir import directory_lock

# A metric file starts with 8 bytes: the used length and padding.
_HEADER_BYTES = 8


def metric_files(path: Path) -> list[str]:
    """List the metric files of ``path`` that hold at least a header."""
    files = []
    for entry in os.scandir(path):
        if not entry.name.endswith(".db"):
            continue

        try:
            size = entry.stat().st_size
        except FileNotFoundError:
            continue

        # A file of zero bytes was created by a worker that has not yet sized
        # it; it holds no values, so leaving it out loses nothing.
        if size >= _HEADER_BYTES:
            files.append(entry.path)

    return files


class WorkerFilesCollector(Collector):
    """Collect the merged metrics of every worker, live or dead, of this host."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def collect(self) -> Iterable[Metric]:
        with directory_lock(self.path, exclusive=False):
            files = metric_files(self.path)
            return list(MultiProcessCollector.merge(files, accumulate=True))
