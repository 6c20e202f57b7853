"""The checks every OpenAI endpoint of the simulator makes first: the body decodes, the model exists, the
service tier is one the API knows; each failure is the 4xx OpenAI answers."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from router.simulator import catalog
from router.simulator.errors import OpenAIError, describe_decode_error

SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority", "fast"})

T = TypeVar("T")


def decode_with(decoder: msgspec.json.Decoder[T], raw: bytes) -> T:
    """`raw` decoded by `decoder`, or OpenAI's 400 naming what is wrong."""
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        message, param, code = describe_decode_error(exc)
        raise OpenAIError(400, message, param=param, code=code) from exc


def check_model(model: str) -> None:
    """Raise OpenAI's 404 `model_not_found` for a model the catalogue does not know."""
    if not catalog.openai_model_exists(model):
        raise OpenAIError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )


def service_tier(requested: str | None) -> str:
    if requested is None or requested == "auto":
        return "default"
    if requested not in SERVICE_TIERS:
        raise OpenAIError(
            400, f"Invalid value for 'service_tier': {requested!r}.", param="service_tier", code="invalid_value"
        )
    return requested
