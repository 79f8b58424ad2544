"""The HTTP API in-process, through Flask's test client."""

import json

import pytest

from service.app import create_app
from service.config import settings_from_document

CONFIG = {
    "service": {"max_tokens_per_call": 10_000_000},
    "providers": {"groq": {"rpm": 30}, "gemini": {}, "openai": {}},
}
TOKEN = "ingest-secret"
GOOD = {"provider": "groq", "input_tokens": 812, "output_tokens": 97}


@pytest.fixture
def client():
    settings = settings_from_document(CONFIG, {"LLM_METRICS_INGEST_TOKEN": TOKEN})
    return create_app(settings).test_client()


def _post(client, body, content_type="application/json", token=TOKEN, method="post"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return getattr(client, method)(
        "/v1/usage", data=data, headers=headers, content_type=content_type
    )


def _series(client) -> str:
    return "\n".join(
        line
        for line in client.get("/metrics").get_data(as_text=True).splitlines()
        if line.startswith("llm_") and "_created" not in line
    )


def test_usage_records_single_object(client):
    before = _series(client)

    response = _post(client, GOOD)

    assert response.status_code == 200
    assert response.get_json() == {"recorded": 1}
    assert _series(client) != before


def test_usage_records_array_of_1000(client):
    response = _post(client, [GOOD] * 1000)

    assert response.status_code == 200
    assert response.get_json() == {"recorded": 1000}


ITEM = {"provider": "groq", "input_tokens": 1, "output_tokens": 1}
BAD_INPUTS = [
    (
        "negative",
        {**ITEM, "input_tokens": -5},
        400,
        "input_tokens must be an integer from 0 to 10000000, got -5",
    ),
    (
        "float",
        {**ITEM, "output_tokens": 1.5},
        400,
        "output_tokens must be an integer from 0 to 10000000, got 1.5",
    ),
    ("float that looks whole", {**ITEM, "output_tokens": 3.0}, 400, "got 3.0"),
    (
        "bool",
        {**ITEM, "input_tokens": True},
        400,
        "input_tokens must be an integer from 0 to 10000000, got true",
    ),
    ("string", {**ITEM, "input_tokens": "12"}, 400, 'got "12"'),
    ("huge", {**ITEM, "input_tokens": 10_000_001}, 400, "got 10000001"),
    (
        "enormous",
        {**ITEM, "input_tokens": 10**30},
        400,
        "input_tokens must be an integer",
    ),
    (
        "null tokens",
        {**ITEM, "output_tokens": None},
        400,
        "output_tokens must be an integer from 0 to 10000000, got null",
    ),
    (
        "missing field",
        {"provider": "groq", "input_tokens": 1},
        400,
        "output_tokens is required",
    ),
    ("unknown field", {**ITEM, "cost": 3}, 400, "cost is not a known field"),
    (
        "unknown provider",
        {**ITEM, "provider": "acme"},
        400,
        "'acme' is not a configured provider; configured providers are: gemini, groq, openai",
    ),
    (
        "malformed provider",
        {**ITEM, "provider": "Groq Cloud"},
        400,
        "provider must be 1 to 64 lowercase letters",
    ),
    ("long provider", {**ITEM, "provider": "a" * 65}, 400, "provider must be 1 to 64"),
    (
        "provider not a string",
        {**ITEM, "provider": 7},
        400,
        "provider must be 1 to 64 lowercase letters, digits, '.', '_' or '-', got 7",
    ),
    (
        "model too long",
        {**ITEM, "model": "m" * 129},
        400,
        "model must be a string of at most 128 characters",
    ),
    ("model not a string", {**ITEM, "model": 4}, 400, "model must be a string"),
    (
        "null body",
        None,
        400,
        "must be a JSON object or an array of 1 to 1000 objects, got null",
    ),
    ("number body", 42, 400, "got 42"),
    ("empty array", [], 400, "The array must hold 1 to 1000 items, got 0"),
    (
        "over 1000 items",
        [ITEM] * 1001,
        400,
        "The array must hold 1 to 1000 items, got 1001",
    ),
    (
        "one bad item in array",
        [ITEM, ITEM, {**ITEM, "input_tokens": -1}],
        400,
        "items[2].input_tokens must be an integer",
    ),
    (
        "array of non-objects",
        [ITEM, "groq"],
        400,
        'items[1] must be a JSON object, got "groq"',
    ),
    ("malformed JSON", '{"provider": "groq",', 400, "The body is not valid JSON"),
    ("empty body", "", 400, "The body is empty"),
    (
        "NaN",
        '{"provider": "groq", "input_tokens": NaN, "output_tokens": 1}',
        400,
        "NaN is not a JSON number",
    ),
    ("deep nesting", "[" * 50_000 + "]" * 50_000, 400, "nested too deeply"),
    ("not UTF-8", b'{"provider": "\xff"}', 400, "The body is not valid JSON"),
]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_usage_rejects_bad_input_and_records_nothing(client, body, status, message):
    before = _series(client)

    response = _post(client, body)

    assert response.status_code == status
    assert message in response.get_json()["error"]
    assert _series(client) == before


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("wrong content type", 415, "must be declared as JSON"),
        ("no content type", 415, "must be declared as JSON"),
        ("oversize body", 413, "larger than the limit of 1048576 bytes"),
        ("wrong method", 405, "not allowed"),
        ("options method", 405, "not allowed"),
        ("missing token", 401, "Authorization: Bearer"),
        ("wrong token", 401, "Authorization: Bearer"),
        ("wrong scheme", 401, "Authorization: Bearer"),
    ],
)
def test_usage_rejects_bad_request_with_status(client, case, status, message):
    before = _series(client)

    if case == "wrong content type":
        response = _post(client, json.dumps(GOOD), content_type="text/plain")
    elif case == "no content type":
        response = _post(client, json.dumps(GOOD), content_type=None)
    elif case == "oversize body":
        response = _post(client, " " * (1 << 20) + json.dumps(GOOD))
    elif case == "wrong method":
        response = _post(client, GOOD, method="put")
    elif case == "options method":
        response = _post(client, GOOD, method="options")
    elif case == "missing token":
        response = _post(client, GOOD, token=None)
    elif case == "wrong token":
        response = _post(client, GOOD, token="ingest-secreT")
    else:
        response = client.post(
            "/v1/usage", json=GOOD, headers={"Authorization": f"Basic {TOKEN}"}
        )

    assert response.status_code == status
    assert message in response.get_json()["error"]
    assert _series(client) == before


def test_usage_401_names_bearer_scheme(client):
    response = _post(client, GOOD, token=None)

    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_usage_405_lists_allowed_method(client):
    response = client.get("/v1/usage")

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_unknown_path_answers_json_404(client):
    response = client.get("/nowhere")

    assert response.status_code == 404
    assert "error" in response.get_json()


def test_metrics_requires_scrape_token_when_set():
    settings = settings_from_document(
        CONFIG, {"LLM_METRICS_SCRAPE_TOKEN": "scrape-secret"}
    )
    client = create_app(settings).test_client()

    refused = client.get("/metrics")
    allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})

    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert b"llm_tokens_total" in allowed.data or b"# HELP" in allowed.data


def test_metrics_answers_openmetrics_when_asked(client):
    _post(client, GOOD)

    response = client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_metrics_gzips_when_accepted(client):
    import gzip

    _post(client, GOOD)

    response = client.get("/metrics", headers={"Accept-Encoding": "gzip"})

    assert response.headers["Content-Encoding"] == "gzip"
    assert b"llm_tokens_total" in gzip.decompress(response.data)


def test_healthz_answers_ok(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_healthz_answers_503_when_directory_is_gone(client, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "gone"))

    response = client.get("/healthz")

    assert response.status_code == 503
    assert "does not exist" in response.get_json()["error"]


def test_usage_accepts_body_of_exactly_one_mebibyte(client):
    document = json.dumps(GOOD)
    body = document + " " * ((1 << 20) - len(document))

    response = _post(client, body)

    assert response.status_code == 200
