"""What the upstream APIs refuse outright, checked before a deferred call is stored, so the caller gets the 400 at once
rather than from its batch line after the wait (`http/admission.py` calls `check` for the batch lane only; in real
time the upstream answers for itself).

The constraints are the documented ones of OpenAI's request schemas (chat completions, completions, embeddings,
responses) and of Anthropic's Messages API: required fields, types, and ranges (`max_tokens` and
`max_completion_tokens` >= 1, `temperature` 0..2 (0..1 for Messages), `top_p` 0..1, `n` 1..128, roles). A body
passes with any field this does not know: only what an upstream surely refuses is refused. One decode of the body
and a few dictionary look-ups: a few microseconds for a typical call.
"""

from __future__ import annotations

from typing import Any

import msgspec

from router.core.errors import BadRequest

_decoder = msgspec.json.Decoder()
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MESSAGES_ROLES = frozenset({"user", "assistant"})
MAX_N = 128


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(obj: dict[str, Any], name: str, low: int, high: int | None = None) -> None:
    value = obj.get(name)
    if value is None:
        return
    if not _is_int(value):
        raise BadRequest(
            f"Invalid type for '{name}': expected an integer, but got {type(value).__name__} instead.",
            param=name,
            code="invalid_type",
        )
    if value < low:
        raise BadRequest(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if high is not None and value > high:
        raise BadRequest(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )


def _number(obj: dict[str, Any], name: str, low: float, high: float) -> None:
    value = obj.get(name)
    if value is None:
        return
    if not _is_number(value):
        raise BadRequest(
            f"Invalid type for '{name}': expected a decimal, but got {type(value).__name__} instead.",
            param=name,
            code="invalid_type",
        )
    if value < low:
        raise BadRequest(
            f"Invalid '{name}': decimal below minimum value. Expected a value >= {low}, but got {value} instead.",
            param=name,
            code="decimal_below_min_value",
        )
    if value > high:
        raise BadRequest(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {high}, but got {value} instead.",
            param=name,
            code="decimal_above_max_value",
        )


def _messages(obj: dict[str, Any], roles: frozenset[str]) -> list[Any]:
    messages = obj.get("messages")
    if messages is None:
        raise BadRequest("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise BadRequest("Invalid type for 'messages': expected an array.", param="messages", code="invalid_type")
    if not messages:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for at, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"Invalid type for 'messages[{at}]': expected an object.", param=f"messages[{at}]", code="invalid_type"
            )
        role = message.get("role")
        if role is None:
            raise BadRequest(
                f"Missing required parameter: 'messages[{at}].role'.",
                param=f"messages[{at}].role",
                code="missing_required_parameter",
            )
        if role not in roles:
            allowed = ", ".join(f"'{r}'" for r in sorted(roles))
            raise BadRequest(
                f"Invalid value: '{role}'. Supported values are: {allowed}.",
                param=f"messages[{at}].role",
                code="invalid_value",
            )
    return messages


def _chat(obj: dict[str, Any]) -> None:
    _messages(obj, CHAT_ROLES)
    _integer(obj, "max_tokens", 1)
    _integer(obj, "max_completion_tokens", 1)
    _integer(obj, "n", 1, MAX_N)
    _number(obj, "temperature", 0, 2)
    _number(obj, "top_p", 0, 1)
    _number(obj, "presence_penalty", -2, 2)
    _number(obj, "frequency_penalty", -2, 2)


def _completions(obj: dict[str, Any]) -> None:
    if obj.get("prompt") is None:
        raise BadRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    _integer(obj, "max_tokens", 0)
    _integer(obj, "n", 1, MAX_N)
    _number(obj, "temperature", 0, 2)
    _number(obj, "top_p", 0, 1)


def _embeddings(obj: dict[str, Any]) -> None:
    if obj.get("input") is None:
        raise BadRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    _integer(obj, "dimensions", 1)


def _responses(obj: dict[str, Any]) -> None:
    _integer(obj, "max_output_tokens", 1)
    _number(obj, "temperature", 0, 2)
    _number(obj, "top_p", 0, 1)


def _anthropic_messages(obj: dict[str, Any]) -> None:
    if obj.get("max_tokens") is None:
        raise BadRequest("max_tokens: Field required", param="max_tokens", code="missing_required_parameter")
    _integer(obj, "max_tokens", 1)
    _messages(obj, MESSAGES_ROLES)
    _number(obj, "temperature", 0, 1)
    _number(obj, "top_p", 0, 1)
    _integer(obj, "top_k", 0)


_CHECKS = {
    "/chat/completions": _chat,
    "/completions": _completions,
    "/embeddings": _embeddings,
    "/responses": _responses,
    "/messages": _anthropic_messages,
}


def check(endpoint: str, body: bytes) -> None:
    """A 400 (OpenAI's wording; `/messages` answers it in Anthropic's shape) for a body the upstream refuses."""
    checks = _CHECKS.get(endpoint)
    if checks is None:
        return
    try:
        obj = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadRequest("We could not parse the JSON body of your request.") from exc
    if not isinstance(obj, dict):
        raise BadRequest("The body of your request must be a JSON object.", code="invalid_type")
    checks(obj)
