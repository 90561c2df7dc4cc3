"""Prompt initializers from Lester et al. (2021) and the original library.

Each factory returns a Flax initializer `(rng, shape, dtype) -> [P, H]`.
Data-dependent ones do their work on the host when built (seeded), so only a
[P, H] array, never the embedding table, enters the compiled init.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]


def load_embeddings(source: str) -> np.ndarray:
  """The [V, H] embedding table from a `.npy` file or a T5X / HF checkpoint."""
  if source.endswith(".npy"):
    table = load_npy(source)
  else:
    from prompt_tuning import readers  # Only this source needs the readers.
    table = readers.read_array(source, "token_embedder/embedding")
  if table.ndim != 2:
    raise ValueError(f"Embedding table from {source} has shape {table.shape}; expected [V, H]")
  return np.asarray(table, np.float32)


def _table(embeddings: str | np.ndarray) -> np.ndarray:
  """An embedding table given directly or by its source (see `load_embeddings`)."""
  return load_embeddings(embeddings) if isinstance(embeddings, str) else np.asarray(embeddings)


def load_npy(path: str) -> np.ndarray:
  """np.load with pickles refused and a clear error for anything that is not an array."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Prompt/embedding file not found: {path}")
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"{path} is not a plain numeric .npy array (pickled objects are "
                     f"refused): {e}") from e


def _fixed(value_PH: np.ndarray, what: str) -> Initializer:
  value_PH = np.asarray(value_PH)

  def init(rng, shape, dtype=jnp.float32):
    del rng
    if tuple(shape) != value_PH.shape:
      raise ValueError(f"{what} has shape {value_PH.shape} but the prompt parameter has shape "
                       f"{tuple(shape)} ([prompt length, model width])")
    return jnp.asarray(value_PH, dtype)
  return init


def random_uniform(scale: float = 0.5) -> Initializer:
  """Uniform in [-scale, scale] (the paper's random initialization)."""
  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, -scale, scale)
  return init


def _sample_rows(table: np.ndarray, count: int, first_n: Optional[int], seed: int) -> np.ndarray:
  limit = table.shape[0] if first_n is None else first_n
  if not 0 < limit <= table.shape[0]:
    raise ValueError(f"first_n={first_n} must be in [1, {table.shape[0]}] (the vocabulary size)")
  rows = np.random.RandomState(seed).choice(limit, size=count, replace=count > limit)
  return table[rows]


def sampled_vocab(embeddings: str | np.ndarray, length: int, first_n: Optional[int] = 5000,
                  seed: int = 0) -> Initializer:
  """Each prompt position is the embedding of a random token among the first N.

  The paper samples from the 5,000 most common tokens; T5's SentencePiece ids
  are roughly frequency-ordered, so `first_n` limits to the lowest ids.
  """
  table = _table(embeddings)
  return _fixed(_sample_rows(table, length, first_n, seed), "sampled-vocabulary prompt")


def _encode(vocabulary: Any, text: str) -> list[int]:
  ids = vocabulary.encode(text)
  return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def class_labels(embeddings: str | np.ndarray, vocabulary: Any, labels: Sequence[str],
                 length: int, fallback: Optional[Initializer] = None,
                 seed: int = 0) -> Initializer:
  """The first positions are the labels' embeddings (each the mean of its sub-tokens).

  Remaining positions come from `fallback` (sampled vocabulary by default).
  `vocabulary` is anything with `encode(str) -> ids` (a seqio vocabulary).
  """
  table = _table(embeddings)
  if len(labels) > length:
    raise ValueError(f"{len(labels)} class labels do not fit a prompt of length {length}")
  rows = []
  for label in labels:
    ids = _encode(vocabulary, label)
    if not ids:
      raise ValueError(f"Class label {label!r} encodes to no tokens")
    if max(ids) >= table.shape[0]:
      raise ValueError(f"Class label {label!r} has token id {max(ids)} beyond the "
                       f"{table.shape[0]}-row embedding table")
    rows.append(table[ids].mean(axis=0))
  rest = length - len(rows)
  return _with_fallback(np.stack(rows) if rows else np.zeros((0, table.shape[1])), rest,
                        fallback or _default_fallback(table, rest, seed) if rest else None,
                        "class-label prompt")


def from_string(embeddings: str | np.ndarray, vocabulary: Any, text: str, length: int,
                fallback: Optional[Initializer] = None, seed: int = 0) -> Initializer:
  """The first positions are the token embeddings of `text`; the rest from `fallback`."""
  table = _table(embeddings)
  ids = _encode(vocabulary, text)[:length]
  rest = length - len(ids)
  return _with_fallback(table[ids], rest,
                        fallback or _default_fallback(table, rest, seed) if rest else None,
                        "string prompt")


def _default_fallback(table: np.ndarray, rest: int, seed: int) -> Initializer:
  """Sampled vocabulary among the first 5,000 ids (or all, for smaller tables)."""
  return sampled_vocab(table, rest, first_n=min(5000, table.shape[0]), seed=seed)


def _with_fallback(head: np.ndarray, rest: int, fallback: Optional[Initializer],
                   what: str) -> Initializer:
  def init(rng, shape, dtype=jnp.float32):
    p, h = shape
    if head.shape[1] != h:
      raise ValueError(f"{what}: embeddings have width {head.shape[1]}, the prompt {h}")
    if rest == 0:
      return jnp.asarray(head, dtype)
    tail = fallback(rng, (p - head.shape[0], h), dtype)
    return jnp.concatenate([jnp.asarray(head, dtype), tail], axis=0)
  return init


def from_array(value_PH: np.ndarray) -> Initializer:
  """A prompt given as an array (e.g. a recycled one)."""
  return _fixed(np.asarray(value_PH, np.float32), "prompt array")


def from_file(path: str) -> Initializer:
  """A prompt saved as `.npy` ([P, H], any float dtype; cast to the parameter dtype)."""
  value = load_npy(path)
  if value.dtype.kind not in "fiu":
    raise ValueError(f"Prompt file {path} holds dtype {value.dtype}; expected a float array")
  return _fixed(value, f"Prompt file {path}")
