"""The simulator's recorded outcomes: a known prompt is answered the way the recorded model did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.simulator.outcomes import Outcomes, right_letter


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
