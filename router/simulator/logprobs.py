"""Deterministic log probabilities for the simulator's tokens, in the chat and the legacy completion shapes."""

from __future__ import annotations

import hashlib
import math

from router.simulator.openai_types import LegacyLogprobs, TokenLogprob, TopLogprob
from router.simulator.text import WORDS, split_tokens

MAX_TOP_CHAT = 20
MAX_TOP_LEGACY = 5


def _alternatives(token: str, digest: bytes, count: int) -> list[str]:
    """`count` distinct tokens other than `token`, picked from the word list by `digest`."""
    out: list[str] = []
    for byte in digest:
        if len(out) == count:
            break
        candidate = " " + WORDS[byte % len(WORDS)][:3]
        if candidate != token and candidate not in out:
            out.append(candidate)
    return out


def _position(seed: bytes, index: int, token: str, top: int) -> tuple[float, list[tuple[str, float]]]:
    """The chosen token's log probability and `top` likeliest tokens there, most likely first.

    The chosen token is the likeliest (probability 0.80 to 0.95) and the alternatives fall off from e^-4 down
    (together under 0.03), so the probabilities at a position never add up past 1.
    """
    digest = hashlib.blake2b(seed + index.to_bytes(4, "little") + token.encode(), digest_size=32).digest()
    chosen = round(math.log(0.8 + 0.15 * digest[0] / 256), 6)
    ranked = [(token, chosen)]
    for rank, alt in enumerate(_alternatives(token, digest[2:], max(0, top - 1))):
        ranked.append((alt, -round(4 + rank + digest[1] / 256, 6)))
    return chosen, ranked[:top]


def chat(text: str, top: int, seed: bytes) -> list[TokenLogprob]:
    """One `ChatCompletionTokenLogprob` per token of `text`, each with `top` alternatives (the token itself first)."""
    out = []
    for index, token in enumerate(split_tokens(text)):
        chosen, ranked = _position(seed, index, token, top)
        out.append(
            TokenLogprob(
                token=token,
                logprob=chosen,
                bytes=list(token.encode()),
                top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in ranked],
            )
        )
    return out


def legacy(text: str, top: int, seed: bytes) -> LegacyLogprobs:
    """The legacy completion `logprobs` of a choice's `text`: `top` likeliest tokens at each position."""
    tokens = split_tokens(text)
    logprobs, tops, offsets = [], [], []
    at = 0
    for index, token in enumerate(tokens):
        chosen, ranked = _position(seed, index, token, top)
        logprobs.append(chosen)
        tops.append(dict(ranked))
        offsets.append(at)
        at += len(token)
    return LegacyLogprobs(tokens=tokens, token_logprobs=logprobs, top_logprobs=tops, text_offset=offsets)


def legacy_slice(whole: LegacyLogprobs, start: int, stop: int) -> LegacyLogprobs:
    """Tokens `start` to `stop` of a choice's logprobs: what one streamed chunk carries."""
    return LegacyLogprobs(
        tokens=whole.tokens[start:stop],
        token_logprobs=whole.token_logprobs[start:stop],
        top_logprobs=whole.top_logprobs[start:stop],
        text_offset=whole.text_offset[start:stop],
    )
