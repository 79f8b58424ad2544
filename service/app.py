"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from service import metrics
from service.config import Settings, load_settings
from service.views import MAX_BODY_BYTES, blueprint

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the application; load the settings from the environment if not given."""
    settings = settings or load_settings()
    app = Flask(__name__)
    # One byte past the limit: a chunked body is cut at MAX_CONTENT_LENGTH
    # without an error, so the view needs that byte to tell "too large" apart.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    app.extensions["llm_token_metrics"] = settings

    metrics.configure(settings)
    app.register_blueprint(blueprint)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)

    logger.info(
        "Application created (config: %s, providers: %d)",
        settings.source,
        len(settings.providers),
    )
    return app


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    # Routing and size errors come from Werkzeug; they get the same JSON
    # shape as the API's own errors, with a sentence that says what to do.
    status = exc.code or 500
    allowed = ", ".join(getattr(exc, "valid_methods", None) or [])
    messages = {
        404: "There is no endpoint at this path",
        405: f"The method {request.method} is not allowed here; use {allowed}",
        413: f"The body is larger than the limit of {MAX_BODY_BYTES} bytes",
    }
    response = jsonify(error=messages.get(status) or _one_sentence(exc.description))

    if status == 405:
        response.headers["Allow"] = allowed

    return response, status


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    logger.exception("Request failed unexpectedly")
    return jsonify(error="The service failed to handle the request"), 500


def _one_sentence(text: str | None) -> str:
    first = " ".join((text or "The request failed").split()).split(". ")[0]
    return first.rstrip(".")
