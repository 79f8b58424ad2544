import json

import pytest

from service.config import settings_from_document
from service.validation import UsageError, UsageItem, parse_usage

SETTINGS = settings_from_document(
    {"service": {"max_tokens_per_call": 1000}, "providers": {"groq": {}, "gemini": {}}}
)


def _body(document) -> bytes:
    return json.dumps(document).encode()


def test_parse_usage_accepts_single_object():
    body = _body(
        {"provider": "groq", "input_tokens": 5, "output_tokens": 0, "model": "llama"}
    )

    items = parse_usage(body, SETTINGS)

    assert items == [UsageItem("groq", 5, 0)]


def test_parse_usage_accepts_array_in_order():
    body = _body(
        [
            {"provider": "groq", "input_tokens": 1, "output_tokens": 2},
            {"provider": "gemini", "input_tokens": 1000, "output_tokens": 3},
        ]
    )

    items = parse_usage(body, SETTINGS)

    assert items == [UsageItem("groq", 1, 2), UsageItem("gemini", 1000, 3)]


def test_parse_usage_names_item_and_field_of_bad_value():
    items = [{"provider": "groq", "input_tokens": 1, "output_tokens": 1}] * 3
    items = [*items, {"provider": "groq", "input_tokens": -5, "output_tokens": 1}]

    with pytest.raises(UsageError) as caught:
        parse_usage(_body(items), SETTINGS)

    assert (
        str(caught.value)
        == "items[3].input_tokens must be an integer from 0 to 1000, got -5"
    )


def test_parse_usage_lists_configured_providers_for_unknown_one():
    with pytest.raises(
        UsageError,
        match="'mystery' is not a configured provider; "
        "configured providers are: gemini, groq",
    ):
        parse_usage(
            _body({"provider": "mystery", "input_tokens": 1, "output_tokens": 1}),
            SETTINGS,
        )


def test_parse_usage_accepts_unknown_provider_when_allowed():
    settings = settings_from_document({"service": {"allow_unknown_providers": True}})

    items = parse_usage(
        _body({"provider": "mystery", "input_tokens": 1, "output_tokens": 1}), settings
    )

    assert items == [UsageItem("mystery", 1, 1)]


def test_parse_usage_rejects_duplicate_field():
    body = b'{"provider": "groq", "input_tokens": 1, "input_tokens": 2, "output_tokens": 1}'

    with pytest.raises(UsageError, match="names the field 'input_tokens' twice"):
        parse_usage(body, SETTINGS)


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b"1" * 5000, b"NaN", b"\xff\xfe\x00", b"{"],
)
def test_parse_usage_rejects_hostile_json_with_usage_error(body):
    with pytest.raises(UsageError, match="not valid JSON|must be a JSON object"):
        parse_usage(body, SETTINGS)
