"""Render ``/metrics``: the merged metrics, in the format the scraper asks for."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

from service import metrics
from service.multiproc_dir import MULTIPROC_ENV


@dataclass(frozen=True)
class Exposition:
    """A rendered scrape: the body and the headers that describe it."""

    body: bytes
    content_type: str
    content_encoding: str | None = None


def render(accept: str | None, accept_encoding: str | None) -> Exposition:
    """Render every metric of this host as Prometheus text or OpenMetrics.

    Only call this where ``metrics.PROMETHEUS_AVAILABLE`` is true.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder, gzip_accepted

    from service.collector import WorkerFilesCollector

    multiproc_path = os.environ.get(MULTIPROC_ENV)
    if multiproc_path:
        # A fresh registry per scrape: the collector holds no state, and
        # building one costs less than a microsecond.
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerFilesCollector(multiproc_path))
    else:
        registry = metrics.registry

    encoder, content_type = choose_encoder(accept or "")
    body = encoder(registry)

    if gzip_accepted(accept_encoding or ""):
        return Exposition(gzip.compress(body, compresslevel=1), content_type, "gzip")

    return Exposition(body, content_type)
