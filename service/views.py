"""The HTTP API: ``/v1/usage``, ``/v1/quota``, ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import logging
import os

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from service import metrics
from service.auth import bearer_token_matches
from service.config import Settings
from service.exposition import render
from service.multiproc_dir import MULTIPROC_ENV, check_writable, shared_directory
from service.quota import refresh_gauge
from service.validation import UsageError, parse_usage

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
NO_PROMETHEUS = "prometheus_client is not installed, so no metrics are recorded"

blueprint = Blueprint("api", __name__)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["llm_token_metrics"]
    return settings


def _error(message: str, status: int) -> tuple[Response, int]:
    return jsonify(error=message), status


def _unauthorized(token: str | None) -> tuple[Response, int] | None:
    """Return a 401 response unless the request carries ``token`` (if one is set)."""
    if token is None or bearer_token_matches(
        request.headers.get("Authorization"), token
    ):
        return None

    response, status = _error(
        "This endpoint needs an Authorization: Bearer header with the right token",
        401,
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="llm-token-metrics"'
    return response, status


@blueprint.post("/v1/usage", provide_automatic_options=False)
def post_usage() -> tuple[Response, int]:
    """Record one LLM call, or an array of them, all or nothing."""
    settings = _settings()
    refusal = _unauthorized(settings.ingest_token)
    if refusal is not None:
        return refusal

    if not request.is_json:
        return _error(
            "The body must be declared as JSON with Content-Type: application/json",
            415,
        )

    body = _read_body()
    try:
        items = parse_usage(body, settings)
    except UsageError as exc:
        logger.debug("Usage refused (reason: %s)", exc)
        return _error(str(exc), 400)

    recorder = metrics.current_recorder()
    if recorder is None:
        return _error(NO_PROMETHEUS, 503)

    recorder.record_items(items)
    logger.debug("Usage recorded (calls: %d)", len(items))
    # Written by hand: jsonify costs more than the recording itself.
    recorded = f'{{"recorded": {len(items)}}}\n'
    return Response(recorded, content_type="application/json"), 200


def _read_body() -> bytes:
    """Read the request body, refusing one past ``MAX_BODY_BYTES``."""
    if request.content_length is None:
        # Chunked: Werkzeug stops one byte past the limit, silently.
        body = request.get_data(cache=False)
    else:
        # Werkzeug has refused a declared length past the limit already;
        # reading the declared length spares its 64 KiB read buffers.
        body = request.stream.read(request.content_length)

    if len(body) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()

    return body


@blueprint.get("/metrics", provide_automatic_options=False)
def get_metrics() -> Response | tuple[Response, int]:
    """Expose the merged metrics of every worker of this host."""
    refusal = _unauthorized(_settings().scrape_token)
    if refusal is not None:
        return refusal

    if not metrics.PROMETHEUS_AVAILABLE:
        return _error(NO_PROMETHEUS, 503)

    recorder = metrics.current_recorder()
    if recorder is not None:
        recorder.prepare_series()

    # Quota usage is computed now, from every worker's windows, so that the
    # gauge is current whichever worker answers (see service.quota).
    refresh_gauge(_settings(), shared_directory())
    exposition = render(
        request.headers.get("Accept"), request.headers.get("Accept-Encoding")
    )
    response = Response(exposition.body, content_type=exposition.content_type)
    if exposition.content_encoding:
        response.headers["Content-Encoding"] = exposition.content_encoding
        response.vary.add("Accept-Encoding")

    return response


@blueprint.get("/v1/quota", provide_automatic_options=False)
def get_quota() -> tuple[Response, int]:
    """Report every configured limit's usage: the numbers behind the gauge."""
    settings = _settings()
    refusal = _unauthorized(settings.scrape_token)
    if refusal is not None:
        return refusal

    providers: dict[str, dict[str, dict[str, float]]] = {}
    for usage in refresh_gauge(settings, shared_directory()):
        providers.setdefault(usage.provider, {})[usage.quota_type] = {
            "used": usage.used,
            "limit": usage.limit,
            "percent": usage.percent,
        }

    return jsonify(providers=providers), 200


@blueprint.get("/healthz", provide_automatic_options=False)
def get_healthz() -> tuple[Response, int]:
    """Say whether this worker can write its metric files."""
    if not metrics.PROMETHEUS_AVAILABLE:
        return jsonify(status="unavailable", error=NO_PROMETHEUS), 503

    # Outside multiprocess mode the values live in memory and are always
    # writable; inside it, the shared directory must be usable.
    multiproc_path = os.environ.get(MULTIPROC_ENV)
    problem = check_writable(multiproc_path) if multiproc_path else None
    if problem is not None:
        return jsonify(status="unavailable", error=problem), 503

    return jsonify(status="ok"), 200
