"""Recorded outcomes: the simulator answers a known prompt the way a recorded model did (`simulate --outcomes`).

The file is the `hybrid-router routes learn` format, one JSON object per line:
`{"prompt": str or messages, "task": str, "scores": {"<model>": number or bool}, "responses": {"<model>": str}}`
(`task` and `responses` optional). A prompt is known by its last user turn. Asked of a model with a recorded
response, the simulator returns that response; with only a score, it returns `ANSWER: <letter>`, the prompt's right
letter when the score is true (or at least 0.5) and a wrong one otherwise, so two models' answers agree exactly when
both were right. Any other prompt or model gets the simulator's usual reply.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec

LETTERS = "ABCD"


class _Message(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None


class Outcome(msgspec.Struct, forbid_unknown_fields=True):
    """One recorded prompt: how each model scored on it, and what some of them answered."""

    prompt: str | list[_Message]
    scores: dict[str, float | bool]
    task: str | None = None
    responses: dict[str, str] = msgspec.field(default_factory=dict)


_DECODER = msgspec.json.Decoder(Outcome)


def last_user_text(prompt: str | list[_Message]) -> str:
    """The text a prompt is known by: the prompt itself, or its last user turn's text parts."""
    if isinstance(prompt, str):
        return prompt.strip()
    for message in reversed(prompt):
        if message.role == "user":
            content = message.content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict)).strip()
            return (content or "").strip()
    return ""


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.strip().encode(), digest_size=16).digest()


def right_letter(text: str) -> str:
    """The letter the simulator treats as the right answer to a prompt (a stable function of its text)."""
    return LETTERS[_key(text)[0] % len(LETTERS)]


class Outcomes:
    """Recorded outcomes by prompt, answering `reply(model, last_user)`."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        self._by_prompt = {_key(last_user_text(o.prompt)): o for o in outcomes}

    def __len__(self) -> int:
        return len(self._by_prompt)

    @classmethod
    def load(cls, path: Path) -> Outcomes:
        """Read a JSONL file of outcomes; a malformed line raises ValueError naming its number."""
        outcomes = []
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    outcomes.append(_DECODER.decode(line))
                except msgspec.DecodeError as exc:
                    raise ValueError(f"{path}:{number}: {exc}") from exc
        return cls(outcomes)

    def reply(self, model: str, last_user: str) -> str | None:
        """What `model` answered this prompt, or None when the prompt or the model was not recorded."""
        outcome = self._by_prompt.get(_key(last_user))
        if outcome is None:
            return None
        if model in outcome.responses:
            return outcome.responses[model]
        if model not in outcome.scores:
            return None
        right = right_letter(last_user)
        if float(outcome.scores[model]) >= 0.5:
            return f"ANSWER: {right}"
        return f"ANSWER: {LETTERS[(LETTERS.index(right) + 1) % len(LETTERS)]}"
