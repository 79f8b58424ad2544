"""A small HTTP client for the two endpoints the tool uses, one per thread.

``http.client`` keeps the connection open when the server allows it and
opens a new one when the server closes it (as Gunicorn's sync workers do
after every response), so one client serves a whole run.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass

from service.stress.errors import SetupError
from service.stress.tally import Tally, tally_from_exposition

# Everything that can go wrong between sending a request and reading its
# answer: refused or reset connections, timeouts, malformed responses.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


@dataclass(frozen=True)
class Answer:
    """A response: its status and its whole body."""

    status: int
    body: bytes


def check_url(url: str) -> str:
    """Return ``url`` without a trailing slash if it can name a service."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(
            f"--url must be an http:// or https:// URL such as "
            f"http://127.0.0.1:8000, got {url!r}."
        )

    if parts.query or parts.fragment:
        raise ValueError(f"--url must not carry a query or fragment, got {url!r}.")

    try:
        parts.port  # noqa: B018 - reading the property is what validates the port
    except ValueError as exc:
        raise ValueError(f"--url has an invalid port, got {url!r}.") from exc

    return url.rstrip("/")


class ServiceClient:
    """Post usage and scrape metrics over one (reused) connection."""

    def __init__(
        self,
        url: str,
        ingest_token: str | None = None,
        scrape_token: str | None = None,
        timeout_seconds: float = 30.0,
    ):
        self.url = url
        self._ingest_token = ingest_token
        self._scrape_token = scrape_token

        parts = urllib.parse.urlsplit(url)
        self._prefix = parts.path.rstrip("/")
        connection_class = (
            http.client.HTTPSConnection
            if parts.scheme == "https"
            else http.client.HTTPConnection
        )
        self._connection = connection_class(
            parts.hostname or "", parts.port, timeout=timeout_seconds
        )

    def post_usage(self, body: bytes) -> Answer:
        """Post a usage body; raise one of ``TRANSPORT_ERRORS`` without an answer."""
        headers = {"Content-Type": "application/json"}
        return self._request("POST", "/v1/usage", body, headers, self._ingest_token)

    def get_metrics(self) -> Answer:
        """Fetch ``/metrics`` as Prometheus text."""
        headers = {"Accept": "text/plain"}
        return self._request("GET", "/metrics", None, headers, self._scrape_token)

    def close(self) -> None:
        self._connection.close()

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        token: str | None,
    ) -> Answer:
        if token:
            headers["Authorization"] = f"Bearer {token}"

        try:
            self._connection.request(method, self._prefix + path, body, headers)
            response = self._connection.getresponse()
            return Answer(response.status, response.read())
        except TRANSPORT_ERRORS:
            # The connection is in an unknown state: start the next request
            # on a new one.
            self._connection.close()
            raise


def scrape(client: ServiceClient) -> Tally:
    """Scrape ``/metrics`` and return its tally; raise ``SetupError`` if refused."""
    try:
        answer = client.get_metrics()
    except TRANSPORT_ERRORS as exc:
        raise SetupError(
            f"Cannot reach the service at {client.url}: {describe(exc)}."
        ) from exc

    if answer.status in {401, 403}:
        raise SetupError(
            f"The service refused the scrape of {client.url}/metrics with HTTP "
            f"{answer.status}; give its token with --scrape-token or "
            "LLM_METRICS_SCRAPE_TOKEN."
        )

    if answer.status != 200:
        raise SetupError(
            f"The scrape of {client.url}/metrics answered HTTP {answer.status}: "
            f"{error_text(answer.body)}."
        )

    return tally_from_exposition(answer.body.decode("utf-8", errors="replace"))


def describe(exc: BaseException) -> str:
    """Name a transport error in a few words: its type and its message."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def error_text(body: bytes, limit: int = 160) -> str:
    """Return a response's error sentence, or the start of its body, cut short."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None

    if isinstance(document, dict) and isinstance(document.get("error"), str):
        text = document["error"]

    text = " ".join(text.split()).rstrip(".") or "an empty body"
    return text if len(text) <= limit else text[: limit - 3] + "..."
