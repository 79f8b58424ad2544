"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from service import metrics
from service.config import Settings, load_settings
from service.views import MAX_BODY_BYTES, blueprint

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the application; load the settings from the environment if not given."""
    settings = settings or load_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
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
    # Werkzeug's descriptions are whole sentences; the JSON body keeps them
    # so that every error, routing ones included, has the same shape.
    response = jsonify(error=_one_sentence(exc.description or exc.name))
    status = exc.code or 500

    if status == 405 and exc.response is None:
        allowed = getattr(exc, "valid_methods", None) or []
        response.headers["Allow"] = ", ".join(allowed)

    return response, status


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    logger.exception("Request failed unexpectedly")
    return jsonify(error="The service failed to handle the request"), 500


def _one_sentence(text: str) -> str:
    return " ".join(text.split()).rstrip(".")
