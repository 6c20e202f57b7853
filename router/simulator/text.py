"""Deterministic stand-ins for a model: reply text, token counts, prompt-cache hits and embedding vectors."""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import re
import sys
import time
from array import array
from collections.abc import Callable, Iterable

WORDS = (
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor",
    "indigo", "juniper", "kestrel", "lagoon", "meadow", "nimbus", "orchid", "prairie",
    "quartz", "raven", "sierra", "tundra", "umber", "violet", "willow", "xenon",
    "yarrow", "zephyr", "anchor", "beacon", "canyon", "dune", "estuary", "falcon",
    "glacier", "heron", "island", "jasper", "kelp", "lantern", "marble", "nectar",
    "onyx", "pebble", "quill", "ridge", "saffron", "thistle", "upland", "valley",
    "wren", "yonder", "zinnia", "aurora", "brook", "cobalt", "dawn", "echo",
    "fern", "grove", "hollow", "iris", "jade", "knoll", "lichen", "moss",
)  # fmt: skip

_WORD_BY_BYTE = WORDS * (256 // len(WORDS))  # index by a hash byte directly, no per-word Python code
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
"""Per-message framing tokens, as OpenAI's chat format adds them."""
REPLY_PRIMING_TOKENS = 3
CACHE_MIN_TOKENS = 1024
CACHE_BLOCK_TOKENS = 128
_CACHE_BLOCK_CHARS = CACHE_BLOCK_TOKENS * CHARS_PER_TOKEN
_CACHE_MAX_ENTRIES = 1_000_000


def count_tokens(text: str) -> int:
    """Tokens in `text` at about four characters a token (0 for the empty string)."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def split_tokens(text: str) -> list[str]:
    """`text` as the simulator's tokens: runs of four characters (the last may be shorter), as `count_tokens` counts."""
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def clip_to_tokens(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """`text` cut to at most `max_tokens` tokens, and whether it was cut."""
    if max_tokens is None or count_tokens(text) <= max_tokens:
        return text, False
    return text[: max(0, max_tokens) * CHARS_PER_TOKEN], True


class Conversation:
    """A prompt reduced to (role, text) turns: the one thing both providers' answers are derived from.

    System and developer turns share the role "system" so that an OpenAI chat and its Anthropic translation
    (top-level `system`) get the same answer.
    """

    __slots__ = ("digest", "last_user", "recorded", "text", "turns")

    def __init__(self, turns: Iterable[tuple[str, str]]) -> None:
        self.turns = [("system" if role == "developer" else role, content) for role, content in turns]
        self.text = "".join(f"{role}\x1f{content}\x1e" for role, content in self.turns)
        self.last_user = next((content for role, content in reversed(self.turns) if role == "user"), "")
        self.digest = hashlib.blake2b(self.text.encode(), digest_size=16).digest()
        self.recorded: str | None = None
        """What the asked-for model answered this prompt in recorded outcomes (`simulate --outcomes`), if known."""

    def chat_prompt_tokens(self) -> int:
        """Prompt tokens the way chat formats count them: text plus per-message framing."""
        framing = MESSAGE_OVERHEAD_TOKENS * len(self.turns) + REPLY_PRIMING_TOKENS
        return framing + sum(count_tokens(content) for _, content in self.turns)

    def reply(self, variant: int = 0) -> str:
        """A deterministic reply: a fingerprint of the last user turn, then words picked by a hash of the turns (or
        the recorded answer, when the outcomes know this prompt and model)."""
        if self.recorded is not None and variant == 0:
            return self.recorded
        h = hashlib.blake2b(self.digest + variant.to_bytes(4, "little"), digest_size=32).digest()
        count = 8 + h[0] % 24
        words = " ".join(map(_WORD_BY_BYTE.__getitem__, h[1 : 1 + count]))
        return f"Simulated reply {fingerprint(self.last_user)}: {words.capitalize()}."


def fingerprint(text: str) -> str:
    """Eight hex digits naming `text`, shown in replies so different prompts give visibly different answers."""
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def split_for_stream(text: str, pieces: int = 6) -> list[str]:
    """`text` split on word boundaries into up to `pieces` chunks that join back to exactly `text`."""
    words = text.split(" ")
    step = max(1, math.ceil(len(words) / pieces))
    chunks = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    return [chunk if i == len(chunks) - 1 else chunk + " " for i, chunk in enumerate(chunks)]


class PrefixCache:
    """Prompt prefixes seen before, in 128-token blocks, like OpenAI's automatic prompt caching.

    A prompt of at least 1024 tokens whose leading blocks (per model) were seen before reports those blocks as
    `cached_tokens`: a multiple of 128, at least 1024, never more than the prompt.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def hit(self, model: str, prompt: str, prompt_tokens: int) -> int:
        """Cached tokens for this prompt, remembering its blocks for the next call."""
        if prompt_tokens < CACHE_MIN_TOKENS:
            return 0
        if len(self._seen) > _CACHE_MAX_ENTRIES:  # bound memory in long benchmark runs
            self._seen.clear()
        chain = model.encode()
        hits = 0
        matching = True
        data = prompt.encode()
        for start in range(0, len(data) - _CACHE_BLOCK_CHARS + 1, _CACHE_BLOCK_CHARS):
            # Chained digests: a block only counts when everything before it matched too.
            chain = hashlib.blake2b(chain + data[start : start + _CACHE_BLOCK_CHARS], digest_size=16).digest()
            if matching and chain in self._seen:
                hits += 1
            else:
                matching = False
                self._seen.add(chain)
        cached = min(hits * CACHE_BLOCK_TOKENS, prompt_tokens // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS)
        return cached if cached >= CACHE_MIN_TOKENS else 0

    def clear(self) -> None:
        """Forget every prefix."""
        self._seen.clear()


ANTHROPIC_CACHE_TTL_S = 300.0
_MIN_4096 = re.compile(r"opus-4[-.]5|haiku-4[-.]5")


def anthropic_cache_min(model: str) -> int:
    """The shortest prefix Anthropic caches for `model`: 4,096 tokens for Opus 4.5 and Haiku 4.5, 2,048 for the
    Haiku 3 and 3.5 models, 1,024 for the others."""
    name = model.lower()
    return 4096 if _MIN_4096.search(name) else 2048 if "haiku" in name else 1024


class BreakpointCache:
    """Anthropic's prompt cache: the prefixes a request marks with `cache_control`, each kept `ttl_s` after it was
    last written or read (per model, keyed by the same digests as `PrefixCache`'s blocks).

    `bill` gives what a request pays: the longest marked prefix found is read; the part of the longest marked prefix
    beyond it is written; a prefix shorter than the model's minimum is neither.
    """

    __slots__ = ("_clock", "_expiry", "ttl_s")

    def __init__(self, ttl_s: float = ANTHROPIC_CACHE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._expiry: dict[bytes, float] = {}

    def bill(self, model: str, prefixes: Iterable[tuple[str, int]]) -> tuple[int, int]:
        """(tokens read, tokens written) for a request whose marked prefixes are (text, tokens), in order."""
        now, minimum = self._clock(), anthropic_cache_min(model)
        if len(self._expiry) > _CACHE_MAX_ENTRIES:
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
        marked = [(hashlib.blake2b(model.encode() + b"\0" + p.encode(), digest_size=16).digest(), tokens)
                  for p, tokens in prefixes if tokens >= minimum]  # fmt: skip
        read = max((tokens for key, tokens in marked if self._expiry.get(key, 0.0) > now), default=0)
        longest = max((tokens for _, tokens in marked), default=0)
        for key, _ in marked:
            self._expiry[key] = now + self.ttl_s
        return read, max(0, longest - read)

    def clear(self) -> None:
        """Forget every prefix."""
        self._expiry.clear()


@functools.lru_cache(maxsize=64)
def _pair_tables(dimensions: int) -> tuple[bytes, ...]:
    """Eight byte-translation tables: hash byte b -> byte k of the float32 pair r*(cos t_b, sin t_b)."""
    radius = math.sqrt(2 / dimensions)  # each pair has norm `radius`, so the whole vector has norm 1
    pairs = array("f")
    for b in range(256):
        angle = 2 * math.pi * (b + 0.5) / 256
        pairs.extend((radius * math.cos(angle), radius * math.sin(angle)))
    raw = pairs.tobytes()
    return tuple(bytes(raw[8 * b + k] for b in range(256)) for k in range(8))


def embedding(key: bytes, dimensions: int) -> array[float]:
    """A deterministic float32 unit vector for `key`; a shorter one is a renormalised prefix of a longer one.

    Each hash byte picks a point on a circle for two coordinates, so the norm is exact without a per-element
    Python loop: the vector is assembled with `bytes.translate`, which keeps embeddings cheap for benchmarks.
    """
    even = dimensions + dimensions % 2
    digest = hashlib.shake_256(key).digest(even // 2)
    packed = bytearray(4 * even)
    for k, table in enumerate(_pair_tables(even)):
        packed[k::8] = digest.translate(table)
    vector = array("f")
    vector.frombytes(packed)
    if even != dimensions:  # odd length: drop the spare coordinate and renormalise (the slow, rare path)
        del vector[-1]
        norm = math.hypot(*vector) or 1.0
        vector = array("f", [x / norm for x in vector])
    return vector


def embedding_base64(vector: array[float]) -> str:
    """The vector as base64 of little-endian float32, the layout the OpenAI SDK decodes."""
    if sys.byteorder == "big":
        vector = array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode()
