"""The simulator's recorded outcomes: a known prompt is answered the way the recorded model did."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from router.simulator.outcomes import LETTERS, Outcomes, right_letter
from tests.helpers.servers import Sim


def _write(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "outcomes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_recorded_response_is_returned_as_recorded(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"prompt": "What is 2+3?", "scores": {"big": True, "small": False},
                              "responses": {"big": "5\n#### 5", "small": "It is 6"}}])  # fmt: skip
    outcomes = Outcomes.load(path)
    assert outcomes.reply("big", "What is 2+3?") == "5\n#### 5"
    assert outcomes.reply("small", "  What is 2+3?\n") == "It is 6"
    assert outcomes.reply("other", "What is 2+3?") is None
    assert outcomes.reply("big", "What is 2+4?") is None


def test_scored_models_agree_exactly_when_both_were_right(tmp_path: Path) -> None:
    rows = [
        {"prompt": [{"role": "system", "content": "Answer."}, {"role": "user", "content": f"question {i}"}],
         "task": "t", "scores": {"big": True, "small": i % 2 == 0, "tiny": 0.2}}
        for i in range(20)
    ]  # fmt: skip
    outcomes = Outcomes.load(_write(tmp_path, rows))
    assert len(outcomes) == 20
    for i in range(20):
        big, small, tiny = (outcomes.reply(m, f"question {i}") for m in ("big", "small", "tiny"))
        assert big == f"ANSWER: {right_letter(f'question {i}')}"
        assert (small == big) is (i % 2 == 0)
        assert tiny != big


def test_a_malformed_line_names_its_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "scores": {"m": 1}}\n\n{"prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:3:"):
        Outcomes.load(path)


def test_the_simulator_plays_recorded_models_in_real_time_and_in_batches(sim: Sim, tmp_path: Path) -> None:
    path = _write(tmp_path, [{"prompt": "What is 2+3?", "scores": {"gpt-4o": True, "gpt-4o-mini": False},
                              "responses": {"gpt-4o": "2+3=5\n#### 5"}}])  # fmt: skip
    sim.configure(outcomes=str(path))
    ask = [{"role": "user", "content": "What is 2+3?"}]
    with openai.OpenAI(base_url=sim.v1, api_key="sk-sim") as client:
        strong = client.chat.completions.create(model="gpt-4o", messages=ask)  # type: ignore[arg-type]
        weak = client.chat.completions.create(model="gpt-4o-mini", messages=ask)  # type: ignore[arg-type]
        other = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert strong.choices[0].message.content == "2+3=5\n#### 5"
        right = right_letter("What is 2+3?")
        assert weak.choices[0].message.content == f"ANSWER: {LETTERS[(LETTERS.index(right) + 1) % len(LETTERS)]}"
        assert (other.choices[0].message.content or "").startswith("Simulated reply")
        line = {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o", "messages": ask}}  # fmt: skip
        uploaded = client.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.1)
            batch = client.batches.retrieve(batch.id)
        output = json.loads(client.files.content(batch.output_file_id or "").read())
        assert output["response"]["body"]["choices"][0]["message"]["content"] == "2+3=5\n#### 5"
    (tmp_path / "claude").mkdir()
    claude_outcomes = _write(tmp_path / "claude", [{"prompt": "Name a colour.", "scores": {"claude-sonnet-4-5": 1},
                                                    "responses": {"claude-sonnet-4-5": "Blue."}}])  # fmt: skip
    sim.configure(outcomes=str(claude_outcomes))
    with anthropic.Anthropic(base_url=sim.base, api_key="sk-sim") as claude:
        message = claude.messages.create(
            model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "Name a colour."}]
        )
        assert message.content[0].type == "text" and message.content[0].text == "Blue."
