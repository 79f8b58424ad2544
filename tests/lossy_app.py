"""Test-only services that answer like the real one but count wrongly.

The stress tool must say so when a service loses calls or counts them twice.
These apps are the real application, Gunicorn config and metrics, with the
recorder changed behind the HTTP API, which still answers ``{"recorded": N}``.
Gunicorn serves them as ``tests.lossy_app:every_other_call()``.
"""

from __future__ import annotations

import itertools

from service import metrics
from service.app import create_app


def every_other_call():
    """Build an app whose workers each record only their 1st, 3rd, 5th... call."""
    app = create_app()
    recorder = metrics.current_recorder()
    record_items = recorder.record_items
    numbers = itertools.count()

    def record_some(items):
        record_items([item for item in items if next(numbers) % 2 == 0])

    recorder.record_items = record_some
    return app


def every_call_twice():
    """Build an app whose workers record every call two times."""
    app = create_app()
    recorder = metrics.current_recorder()
    record_items = recorder.record_items

    def record_twice(items):
        record_items(items)
        record_items(items)

    recorder.record_items = record_twice
    return app


def every_fifth_request_fails():
    """Build an app that records every call but answers 500 to every fifth request.

    Such a request's calls are recorded though the client sees a failure, as
    when a worker dies after recording and before answering.
    """
    app = create_app()
    recorder = metrics.current_recorder()
    record_items = recorder.record_items
    numbers = itertools.count(1)

    def record_then_fail(items):
        record_items(items)
        if next(numbers) % 5 == 0:
            raise RuntimeError("failing on purpose after recording")

    recorder.record_items = record_then_fail
    return app
