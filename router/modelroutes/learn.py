"""`hybrid-router routes learn FILE`: scored examples written into the evidence the router uses.

One JSON object per line: `{"prompt": str or messages, "task": str (optional), "scores": {"<model>": number or
bool}}`, higher is better. For each declared route whose asked-for model and at least one candidate are scored on
a line, the line becomes a pair of scores per scored candidate, under the line's task, or, without one, under the
automatic task its prompt gives (tasks.py): its shape and, with the `embeddings` extra, its nearest embedding
cluster (clusters are fitted on the file's task-less prompts the first time a route learns, and kept). Token counts
are approximated as characters / 4 (the import has no tokenizer; they only weigh what moving a task saves).

Parsing is pure (`parse_lines`, `observations`); `learn` writes through the store. A line that cannot be used is
counted, with its line number, and never stops the import.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from router.core.model_routes import Route
from router.modelroutes.embeddings import ClusterIndex, Clusters, Embedder, default_k, fit_clusters
from router.modelroutes.evidence import score
from router.modelroutes.store import EvidenceStore, Observation
from router.modelroutes.tasks import auto_task, features, prompt_of, valid_task

CHARS_PER_TOKEN = 4


class Line(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One scored example."""

    prompt: str | list[Any]
    scores: dict[str, float | bool]
    task: str | None = None


class Problem(msgspec.Struct, frozen=True):
    line: int
    problem: str


class Parsed(msgspec.Struct, frozen=True):
    lines: list[tuple[int, Line]]
    problems: list[Problem]


class Report(msgspec.Struct, kw_only=True):
    """What an import did: lines read, pairs written per route and task, and the lines it could not use."""

    lines: int = 0
    pairs: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    problems: list[Problem] = msgspec.field(default_factory=list)
    unrouted: int = 0
    """Lines that score no declared route's asked-for model together with one of its candidates."""


_DECODER = msgspec.json.Decoder(Line)


def parse_lines(lines: Iterable[str | bytes]) -> Parsed:
    """Decode and validate the lines of a `routes learn` file (blank lines are skipped)."""
    good: list[tuple[int, Line]] = []
    problems: list[Problem] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = _DECODER.decode(raw)
            for value in line.scores.values():
                score(value)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            problems.append(Problem(number, str(exc)))
            continue
        if line.task is not None and valid_task(line.task) is None:
            problems.append(Problem(number, f"task {line.task!r} is not a usable name (1-64 of A-Za-z0-9._:/@+-)"))
            continue
        good.append((number, line))
    return Parsed(good, problems)


def tokens(line: Line) -> int:
    """The prompt's approximate input tokens (characters / 4)."""
    return max(1, features(prompt_of(line.prompt)).chars // CHARS_PER_TOKEN)


def observations(route: Route, line: Line) -> list[Observation]:
    """The pairs one line gives a route: one per scored candidate, when the asked-for model is scored."""
    if route.source not in line.scores:
        return []
    asked = line.scores[route.source]
    n = tokens(line)
    return [Observation(m, asked, line.scores[m], tokens_in=n) for m in route.to if m in line.scores]


def assign_clusters(texts: Sequence[str], embedder: Embedder, clusters: Clusters | None) -> tuple[Clusters, list[int]]:
    """Each text's nearest cluster, fitting clusters on `texts` when there are none yet."""
    vectors = embedder.embed(list(texts))
    if clusters is None:
        clusters = fit_clusters(vectors, default_k(len(texts)))
    return clusters, ClusterIndex(clusters).nearest(vectors)


async def learn(
    store: EvidenceStore,
    routes: Sequence[Route],
    lines: Iterable[str | bytes],
    *,
    now: float,
    embedder: Embedder | None = None,
) -> Report:
    """Import scored lines into every route they score; returns what was written and what was skipped."""
    parsed = parse_lines(lines)
    report = Report(lines=len(parsed.lines) + len(parsed.problems), problems=list(parsed.problems))
    used: set[int] = set()
    for route in routes:
        rows = [(n, line, obs) for n, line in parsed.lines if (obs := observations(route, line))]
        used.update(n for n, _, _ in rows)
        taskless = [(i, features(prompt_of(line.prompt))) for i, (_, line, _) in enumerate(rows) if line.task is None]
        auto: dict[int, str] = {i: auto_task(f) for i, f in taskless}
        if embedder is not None and taskless:
            clusters, nearest = assign_clusters([f.text for _, f in taskless], embedder, await store.clusters(route))
            await store.save_clusters(route, clusters)
            auto = {i: auto_task(f, c) for (i, f), c in zip(taskless, nearest, strict=True)}
        grouped: dict[str, list[Observation]] = {}
        for i, (_, line, obs) in enumerate(rows):
            task = line.task.strip() if line.task is not None else auto[i]
            grouped.setdefault(task, []).extend(obs)
        counts: Counter[str] = Counter()
        for task, obs in grouped.items():
            for start in range(0, len(obs), 500):
                counts[task] += await store.observe(route, task, obs[start : start + 500], now=now)
        report.pairs[route.key] = dict(counts)
    report.unrouted = len(parsed.lines) - len(used)
    return report
