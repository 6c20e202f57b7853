"""A call's task (rule, header, metadata, tenant), its prompt features, and the bundled embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from router.modelroutes.embeddings import ClusterIndex, default_k, fit_clusters, load_embedder
from router.modelroutes.tasks import EMBED_CHARS, auto_task, features, metadata_task, resolve_task, valid_task


@pytest.mark.parametrize(
    ("sources", "task"),
    [
        ({"rule": "support", "header": "extract", "metadata": "m", "tenant": "acme"}, "support"),
        ({"header": "extract", "metadata": "m", "tenant": "acme"}, "extract"),
        ({"metadata": "summaries", "tenant": "acme"}, "summaries"),
        ({"tenant": "acme"}, "tenant:acme"),
        ({"header": "  padded  "}, "padded"),
        ({"header": "no spaces inside", "metadata": "fallback"}, "fallback"),
        ({"header": "x" * 65}, None),
        ({}, None),
    ],
)
def test_the_task_comes_from_the_rule_the_header_the_metadata_or_the_tenant(
    sources: dict[str, str], task: str | None
) -> None:
    assert resolve_task(**sources) == task


def test_task_names_are_short_and_plain() -> None:
    assert valid_task("billing/en-US:v2") == "billing/en-US:v2"
    for bad in ("", "a b", "{slot}", "x" * 65, None):
        assert valid_task(bad) is None


def test_metadata_task_is_read_only_when_it_is_a_string() -> None:
    assert metadata_task({"metadata": {"task": "extract"}}) == "extract"
    assert metadata_task({"metadata": {"task": 3}}) is None
    assert metadata_task({"metadata": "task"}) is None


def test_features_of_a_chat_call() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {}}]},
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    }
    f = features(body)
    assert f.text == "You are terse.\nsecond"  # system text and the last user message
    assert f.chars == len("You are terse.first questionan answersecond")
    assert (f.json, f.tools, f.shape) == (True, False, "json")
    assert auto_task(f) == "auto:json"
    assert auto_task(f, 12) == "auto:json:c12"


def test_features_of_other_shapes() -> None:
    tools = features({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]})
    assert tools.shape == "tools"
    anthropic = features({"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]})
    assert (anthropic.text, anthropic.shape) == ("Be brief.\nhi", "text")
    legacy = features({"prompt": "complete this"})
    assert legacy.text == "complete this"
    assert len(features({"messages": [{"role": "user", "content": "y" * 50_000}]}).text) == EMBED_CHARS


def test_the_bundled_embeddings_load_offline_and_the_per_call_path_matches_the_batch() -> None:
    embedder = load_embedder()
    assert embedder is not None
    texts = ["What is the boiling point of water?", "Translate 'good morning' into French", ""]
    batch = embedder.embed(texts)
    assert batch.shape == (3, embedder.dim) == (3, 256)
    assert not batch[2].any() and not embedder.embed_one("").any()  # an empty prompt embeds to zeros, not NaN
    for i, text in enumerate(texts[:2]):
        one = embedder.embed_one(text)
        assert one.shape == (1, 256)
        assert np.allclose(one[0], batch[i], atol=1e-5)
        assert float(np.linalg.norm(one)) == pytest.approx(1.0, abs=1e-5)


def test_clusters_group_similar_prompts_and_are_deterministic() -> None:
    embedder = load_embedder()
    assert embedder is not None
    cooking = [f"bake the bread dough in the oven recipe step {i}" for i in range(20)]
    finance = [f"quarterly tax return interest rate on the loan {i}" for i in range(20)]
    vectors = embedder.embed(cooking + finance)
    clusters = fit_clusters(vectors, 2, seed=1)
    assert clusters == fit_clusters(vectors, 2, seed=1)
    labels = ClusterIndex(clusters).nearest(vectors)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[20]
    assert ClusterIndex(clusters).nearest(embedder.embed_one("a sourdough recipe for the oven"))[0] == labels[0]


def test_the_cluster_count_grows_with_the_prompts_and_is_capped() -> None:
    assert [default_k(n) for n in (0, 99, 250, 6_400, 1_000_000)] == [1, 1, 2, 64, 64]
