"""Turn a ``POST /v1/usage`` body into usage items, or say what is wrong."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple, NoReturn

from service.config import PROVIDER_NAME, Settings

MAX_ITEMS = 1000
MAX_MODEL_LENGTH = 128

_REQUIRED_FIELDS = ("provider", "input_tokens", "output_tokens")
_KNOWN_FIELDS = frozenset((*_REQUIRED_FIELDS, "model"))


class UsageError(ValueError):
    """The body is not a valid usage report; ``str()`` is the sentence to return."""


class UsageItem(NamedTuple):
    """One LLM call, checked."""

    provider: str
    input_tokens: int
    output_tokens: int


def parse_usage(body: bytes, settings: Settings) -> list[UsageItem]:
    """Parse and check a whole body; raise ``UsageError`` on the first fault."""
    document = _decode_json(body)

    if isinstance(document, dict):
        return [
            _plainly_valid(document, settings)
            or check_item(document, settings, where="")
        ]

    if not isinstance(document, list):
        _fail(
            "The body must be a JSON object or an array of 1 to 1000 objects, "
            f"got {_describe(document)}"
        )

    if not 1 <= len(document) <= MAX_ITEMS:
        _fail(f"The array must hold 1 to {MAX_ITEMS} items, got {len(document)}")

    return [
        _plainly_valid(item, settings)
        or check_item(item, settings, where=f"items[{index}]")
        for index, item in enumerate(document)
    ]


def _plainly_valid(item: object, settings: Settings) -> UsageItem | None:
    """Return the item if it is valid as it stands, else ``None``.

    Most items are valid, so this checks them in a few comparisons without
    building any message; anything unusual goes to ``check_item``, which
    finds the fault and words it.
    """
    if type(item) is not dict or not item.keys() <= _KNOWN_FIELDS:
        return None

    provider = item.get("provider")
    input_tokens = item.get("input_tokens")
    output_tokens = item.get("output_tokens")
    model = item.get("model", "")
    limit = settings.max_tokens_per_call
    if (
        isinstance(provider, str)
        and provider in settings.providers
        and type(input_tokens) is int
        and type(output_tokens) is int
        and 0 <= input_tokens <= limit
        and 0 <= output_tokens <= limit
        and type(model) is str
        and len(model) <= MAX_MODEL_LENGTH
    ):
        return UsageItem(provider, input_tokens, output_tokens)

    return None


def check_item(item: object, settings: Settings, where: str) -> UsageItem:
    """Check one usage object; ``where`` names it in error messages."""
    prefix = f"{where}." if where else ""
    if not isinstance(item, dict):
        _fail(f"{where or 'The body'} must be a JSON object, got {_describe(item)}")

    for name in _REQUIRED_FIELDS:
        if name not in item:
            _fail(f"{prefix}{name} is required")

    unknown = sorted(set(item) - _KNOWN_FIELDS)
    if unknown:
        _fail(
            f"{prefix}{unknown[0]} is not a known field; known fields are "
            "provider, input_tokens, output_tokens and model"
        )

    if "model" in item:
        _check_model(item["model"], prefix)

    return UsageItem(
        provider=check_provider(item["provider"], settings, f"{prefix}provider"),
        input_tokens=check_tokens(
            item["input_tokens"], settings, f"{prefix}input_tokens"
        ),
        output_tokens=check_tokens(
            item["output_tokens"], settings, f"{prefix}output_tokens"
        ),
    )


def check_provider(value: object, settings: Settings, name: str = "provider") -> str:
    """Return ``value`` if it is a provider this service may record."""
    if not isinstance(value, str) or not PROVIDER_NAME.fullmatch(value):
        _fail(
            f"{name} must be 1 to 64 lowercase letters, digits, '.', '_' or '-', "
            f"got {_describe(value)}"
        )

    if value not in settings.providers and not settings.allow_unknown_providers:
        configured = ", ".join(sorted(settings.providers)) or "none"
        _fail(
            f"{name} {value!r} is not a configured provider; "
            f"configured providers are: {configured}"
        )

    return value


def check_tokens(value: object, settings: Settings, name: str) -> int:
    """Return ``value`` if it is a whole token count within the configured range."""
    # bool is a subclass of int, and JSON's true must not count as 1 token.
    if type(value) is not int or not 0 <= value <= settings.max_tokens_per_call:
        _fail(
            f"{name} must be an integer from 0 to {settings.max_tokens_per_call}, "
            f"got {_describe(value)}"
        )

    return value


def _check_model(value: object, prefix: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_MODEL_LENGTH:
        _fail(
            f"{prefix}model must be a string of at most {MAX_MODEL_LENGTH} "
            f"characters, got {_describe(value)}"
        )


def _decode_json(body: bytes) -> Any:
    if not body.strip():
        _fail("The body is empty; send a JSON object or array")

    try:
        return json.loads(
            body,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except UsageError:
        raise
    except RecursionError:
        _fail("The body is not valid JSON: it is nested too deeply")
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError and the limit on integer digits
        # are all ValueErrors; their text says where the fault is.
        _fail(f"The body is not valid JSON: {exc}")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) == len(pairs):
        return document

    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            _fail(f"The body names the field {key!r} twice in one object")
        seen.add(key)

    return document


def _reject_constant(name: str) -> NoReturn:
    _fail(f"The body is not valid JSON: {name} is not a JSON number")


def _describe(value: object) -> str:
    """Show a rejected value the way the client wrote it, cut short if long."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"

    try:
        text = json.dumps(value)
    except ValueError:
        text = repr(value)

    return text if len(text) <= 40 else f"{text[:37]}..."


def _fail(message: str) -> NoReturn:
    raise UsageError(message)
