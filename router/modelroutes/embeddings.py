"""Prompt embeddings with no downloaded weights, and the clusters that stand for tasks of task-less calls.

`wordllama` ships its 256-dimension static embeddings (about 16 MB) inside its wheel. It is the optional
`embeddings` extra (it brings numpy, tokenizers, pydantic, safetensors: about 100 MB installed), so everything
here imports it and numpy lazily and `load_embedder()` answers None without it: task-less calls then fall back
to their shape alone (tasks.py). `WordLlama.load(disable_download=True)` looks for its tokenizer in `tokenizer/`
while the wheel ships it in `tokenizers/`; loading with `cache_dir` set to the package's own folder finds both.

A route's clusters are k-means centroids of the prompts it learned from (cosine: vectors are unit length); a
call's task is its nearest centroid, so evidence is nearest-neighbour evidence at the cluster level and a call
costs one 256-dimension dot product per centroid.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors, one row per text."""

    dim: int

    def embed(self, texts: list[str]) -> Matrix: ...

    def embed_one(self, text: str) -> Matrix:
        """One text as a 1 x dim matrix: the per-call path, without batching's padding."""
        ...


class WordLlamaEmbedder:
    """wordllama's bundled model, loaded from the installed package (never from the network)."""

    def __init__(self) -> None:
        wordllama: Any = importlib.import_module("wordllama")  # the optional `embeddings` extra (untyped)
        spec = importlib.util.find_spec("wordllama")
        assert spec is not None and spec.origin is not None
        self._model: Any = wordllama.WordLlama.load(cache_dir=Path(spec.origin).parent, disable_download=True)
        self._tokenizer: Any = self._model.tokenizer
        self._table: Any = self._model.embedding  # vocabulary x 256, float32
        self.dim = int(self._table.shape[1])

    def embed(self, texts: list[str]) -> Matrix:
        import numpy as np

        vectors = np.asarray(self._model.embed(texts, norm=False), dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: Matrix = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)  # empty text: zeros
        return unit

    def embed_one(self, text: str) -> Matrix:
        """The same vector as `embed([text])` (average of the token vectors, unit length), at a third of its cost:
        one tokenizer call and one gather, no padded batch."""
        import numpy as np

        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            return np.zeros((1, self.dim), dtype=np.float32)
        index = np.asarray(ids, dtype=np.int64)
        np.clip(index, 0, self._table.shape[0] - 1, out=index)
        vector: Matrix = self._table[index].mean(axis=0, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm > 0 else vector).reshape(1, -1)


def load_embedder() -> Embedder | None:
    """The bundled embedder, or None when the `embeddings` extra is not installed."""
    if importlib.util.find_spec("wordllama") is None or importlib.util.find_spec("numpy") is None:
        return None
    return WordLlamaEmbedder()


class Clusters(msgspec.Struct, frozen=True, kw_only=True):
    """k unit-length centroids of `dim` float32 values, row after row (little-endian bytes: compact in Redis)."""

    dim: int
    k: int
    centroids: bytes

    def matrix(self) -> Matrix:
        import numpy as np

        return np.frombuffer(self.centroids, dtype="<f4").reshape(self.k, self.dim)


class ClusterIndex:
    """Nearest-centroid look-ups over one set of clusters (the matrix is decoded once)."""

    def __init__(self, clusters: Clusters) -> None:
        self.clusters = clusters
        self._matrix = clusters.matrix()

    def nearest(self, vectors: Matrix) -> list[int]:
        """The index of the nearest centroid (highest cosine) of each row of `vectors`."""
        return [int(i) for i in (vectors @ self._matrix.T).argmax(axis=1)]


def default_k(count: int) -> int:
    """How many clusters `count` prompts are split into: about a hundred prompts each, at most 64."""
    return max(1, min(64, count // 100))


def fit_clusters(vectors: Matrix, k: int, *, seed: int = 0, rounds: int = 25) -> Clusters:
    """Spherical k-means (k-means++ start, then Lloyd rounds) of unit-length rows; deterministic for a seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    count = vectors.shape[0]
    k = max(1, min(k, count))
    chosen = [int(rng.integers(count))]
    distance = 1.0 - vectors @ vectors[chosen[0]]
    for _ in range(1, k):
        weights = np.clip(distance, 0, None) ** 2
        total = float(weights.sum())
        pick = int(rng.choice(count, p=weights / total)) if total > 0 else int(rng.integers(count))
        chosen.append(pick)
        distance = np.minimum(distance, 1.0 - vectors @ vectors[pick])
    centroids = vectors[chosen].copy()
    for _ in range(rounds):
        labels = (vectors @ centroids.T).argmax(axis=1)
        moved = centroids.copy()
        for j in range(k):
            members = vectors[labels == j]
            if len(members):
                mean = members.sum(axis=0)
                norm = float(np.linalg.norm(mean))
                moved[j] = mean / norm if norm > 0 else centroids[j]
        if np.allclose(moved, centroids):
            break
        centroids = moved
    matrix = np.ascontiguousarray(centroids, dtype="<f4")
    return Clusters(dim=int(vectors.shape[1]), k=k, centroids=matrix.tobytes())
