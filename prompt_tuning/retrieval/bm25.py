"""BM25 retrieval over a PassageStore, on the `bm25s` library (Lucene's BM25 variant).

Scoring is bm25s's, not ours: this module only tokenizes, indexes, checks k
and maps results back to passages.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from prompt_tuning.retrieval.store import PassageStore


def _bm25s():
  try:
    import bm25s
  except ImportError as e:
    raise ImportError("BM25 retrieval needs bm25s: pip install 'prompt-tuning[retrieval]'",
                      name="bm25s") from e
  return bm25s


class BM25Retriever:
  """Indexes a store once; `retrieve` returns passage positions, best first."""

  def __init__(self, store: PassageStore, k1: float = 1.5, b: float = 0.75):
    bm25s = _bm25s()
    self.store = store
    self._index = bm25s.BM25(k1=k1, b=b)
    self._index.index(bm25s.tokenize([p.contents for p in store.passages], stopwords=None,
                                     show_progress=False), show_progress=False)

  def save(self, folder: str) -> None:
    """Writes the index (bm25s's files) to `folder`, for later reading with bm25s.BM25.load."""
    self._index.save(folder, show_progress=False)

  def check_k(self, k: int) -> None:
    if not 1 <= k <= len(self.store):
      raise ValueError(f"k={k} passages asked of a store of {len(self.store)} passages "
                       f"({self.store.source}); expected 1 <= k <= {len(self.store)}")

  def retrieve(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions [Q, k] int, scores [Q, k]) of the top-k passages per query."""
    self.check_k(k)
    bm25s = _bm25s()
    tokens = bm25s.tokenize(list(queries), stopwords=None, show_progress=False)
    docs, scores = self._index.retrieve(tokens, k=k, show_progress=False)
    return np.asarray(docs, np.int64), np.asarray(scores, np.float32)


def recall_at_k(retriever: BM25Retriever, queries: Sequence[str], gold: Sequence[int],
                ks: Sequence[int]) -> Mapping[int, float]:
  """{k: fraction of queries whose gold passage position is in the top k}."""
  top, _ = retriever.retrieve(queries, max(ks))
  gold = np.asarray(gold)[:, None]
  return {k: float(np.mean(np.any(top[:, :k] == gold, axis=1))) for k in ks}
