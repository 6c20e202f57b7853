"""The fixed model catalogue and the rule that decides whether a model name exists."""

from __future__ import annotations

import msgspec

# (id, owned_by, created): a stable list so `GET /v1/models` is the same on every run.
_MODELS: tuple[tuple[str, str, int], ...] = (
    ("gpt-4o", "system", 1715367049),
    ("gpt-4o-mini", "system", 1721172741),
    ("gpt-4.1", "system", 1744316542),
    ("gpt-4.1-mini", "system", 1744318173),
    ("gpt-4.1-nano", "system", 1744321707),
    ("gpt-5", "system", 1754425777),
    ("gpt-5-mini", "system", 1754425928),
    ("gpt-5-nano", "system", 1754426384),
    ("o3", "system", 1744225308),
    ("o3-mini", "system", 1737146383),
    ("o4-mini", "system", 1744225351),
    ("gpt-3.5-turbo", "openai", 1677610602),
    ("gpt-3.5-turbo-instruct", "system", 1692901427),
    ("text-embedding-3-small", "system", 1705948997),
    ("text-embedding-3-large", "system", 1705953180),
    ("text-embedding-ada-002", "openai-internal", 1671217299),
    ("claude-opus-4", "anthropic", 1747785600),
    ("claude-sonnet-4", "anthropic", 1747785600),
    ("claude-haiku-4", "anthropic", 1760486400),
    ("claude-3-7-sonnet", "anthropic", 1740355200),
    ("claude-3-5-haiku", "anthropic", 1729555200),
)

EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
"""Native vector length per embedding family; other models get 1536."""

SIM_PREFIX = "sim-"


class Model(msgspec.Struct, kw_only=True):
    """The OpenAI `Model` object."""

    id: str
    object: str = "model"
    created: int
    owned_by: str


MODELS = tuple(Model(id=name, created=created, owned_by=owner) for name, owner, created in _MODELS)
_FAMILIES = tuple(m.id for m in MODELS)
_CLAUDE_FAMILIES = tuple(m.id for m in MODELS if m.owned_by == "anthropic")


def openai_model_exists(model: str) -> bool:
    """True for a catalogue model, any name starting with one (dated snapshots), or any `sim-` model."""
    return model.startswith(_FAMILIES) or model.startswith(SIM_PREFIX)


def anthropic_model_exists(model: str) -> bool:
    """True for Claude models (any family prefix, e.g. `claude-sonnet-4-6`) and `sim-` models."""
    return model.startswith(_CLAUDE_FAMILIES) or model.startswith(SIM_PREFIX)


def find_model(model: str) -> Model | None:
    """The catalogue entry for `GET /v1/models/{id}`; derived names get their family's metadata."""
    for entry in MODELS:
        if model == entry.id:
            return entry
    if openai_model_exists(model):
        family = max((m for m in MODELS if model.startswith(m.id)), key=lambda m: len(m.id), default=None)
        owner, created = (family.owned_by, family.created) if family else ("system", 1700000000)
        return Model(id=model, created=created, owned_by=owner)
    return None


def embedding_dimensions(model: str) -> int:
    """The native vector length for an embedding model (longest matching family wins)."""
    for family in sorted(EMBEDDING_DIMENSIONS, key=len, reverse=True):
        if model.startswith(family):
            return EMBEDDING_DIMENSIONS[family]
    return 1536
