"""Prompt initializers from Lester et al. (2021) and the original library.

Each factory returns a Flax initializer `(rng, shape, dtype) -> [P, H]`.
Data-dependent ones do their host work (reading the embedding table or a
file) the first time the initializer really runs, so only a [P, H] array,
never the table, enters the compiled init; while shapes are traced (the
abstract setup phase) and when a prompt is restored from a checkpoint, they
read nothing. Sampled rows are drawn with the initializer's key, so they
follow the run's seed.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import registry
from prompt_tuning.models import params as params_lib

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


def _fixed(value_PH: Callable[[], np.ndarray] | np.ndarray, what: str) -> Initializer:
  """An initializer returning a given [P, H] value, or one computed on first real use."""
  cache: list[np.ndarray] = [] if callable(value_PH) else [np.asarray(value_PH)]

  def init(rng, shape, dtype=jnp.float32):
    del rng
    if params_lib.shapes_only():
      return jnp.zeros(shape, dtype)
    if not cache:
      cache.append(np.asarray(value_PH()))
    if tuple(shape) != cache[0].shape:
      raise ValueError(f"{what} has shape {cache[0].shape} but the prompt parameter has shape "
                       f"{tuple(shape)} ([prompt length, model width])")
    return jnp.asarray(cache[0], dtype)
  return init


@registry.configurable(module="prompt_init")
def random_uniform(scale: float = 0.5) -> Initializer:
  """Uniform in [-scale, scale] (the paper's random initialization)."""
  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, -scale, scale)
  return init


def _rows_among(table: np.ndarray, first_n: Optional[int]) -> np.ndarray:
  """The first `first_n` rows of `table` (all for None), checked against its size."""
  limit = table.shape[0] if first_n is None else first_n
  if not 0 < limit <= table.shape[0]:
    raise ValueError(f"first_n={first_n} must be in [1, {table.shape[0]}] (the vocabulary size)")
  return table[:limit]


def _sample_rows(population: np.ndarray, count: int, rng: Optional[jax.Array],
                 seed: Optional[int]) -> jax.Array:
  """`count` rows of `population` [N, H], drawn with `seed` if given, else with `rng`.

  As in the seed library (`prompts.from_sample_of_embeddings`): indices by
  `jax.random.choice`, without replacement unless `count` exceeds N. Inside
  a jitted init the key is traced: only the [count] indices are computed
  there, and the rows are gathered on the host (a callback), so the table
  never becomes a constant of the compiled program.
  """
  if seed is not None:
    rng = jax.random.PRNGKey(seed)
  elif rng is None:
    raise ValueError("Sampled-vocabulary rows need a random key (the initializer's rng) or "
                     "an explicit seed")
  population = np.asarray(population, np.float32)
  index = jax.random.choice(rng, population.shape[0], (count,), replace=count > len(population))
  if not isinstance(index, jax.core.Tracer):
    return jnp.asarray(population[np.asarray(index)])
  return jax.pure_callback(lambda i: population[np.asarray(i)],
                           jax.ShapeDtypeStruct((count, population.shape[1]), jnp.float32),
                           index, vmap_method="sequential")


@registry.configurable(module="prompt_init")
def sampled_vocab(embeddings: str | np.ndarray, length: int, first_n: Optional[int] = 5000,
                  seed: Optional[int] = None) -> Initializer:
  """Each prompt position is the embedding of a random token among the first N.

  The paper samples from the 5,000 most common tokens; T5's SentencePiece ids
  are roughly frequency-ordered, so `first_n` limits to the lowest ids.

  The rows are drawn with the initializer's rng, which comes from the run's
  seed (`train.seed`): different seeds give different rows, and so do the
  members of a prompt bank (`base.stacked` gives each its own key). An
  explicit `seed` pins the rows instead, whatever the run's seed (every
  member of a bank then starts from the same rows).
  """
  if first_n is not None and first_n < 1:
    raise ValueError(f"first_n={first_n} must be at least 1")
  population: list[np.ndarray] = []

  def init(rng, shape, dtype=jnp.float32):
    if params_lib.shapes_only():
      return jnp.zeros(shape, dtype)
    if not population:  # Read once; only the first N rows are kept.
      population.append(np.array(_rows_among(_table(embeddings), first_n), np.float32))
    if tuple(shape) != (length, population[0].shape[1]):
      raise ValueError(f"sampled-vocabulary prompt has shape {(length, population[0].shape[1])}"
                       f" but the prompt parameter has shape {tuple(shape)} ([prompt length, "
                       "model width])")
    return _sample_rows(population[0], length, rng, seed).astype(dtype)
  return init


def _encode(vocabulary: Any, text: str) -> list[int]:
  ids = vocabulary.encode(text)
  return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


@registry.configurable(module="prompt_init")
def class_labels(embeddings: str | np.ndarray, vocabulary: Any, labels: Sequence[str],
                 length: int, fallback: Optional[Initializer] = None,
                 seed: Optional[int] = None) -> Initializer:
  """The first positions are the labels' embeddings (each the mean of its sub-tokens).

  Remaining positions come from `fallback` (sampled vocabulary by default).
  `vocabulary` is anything with `encode(str) -> ids` (a seqio vocabulary).
  """
  if len(labels) > length:
    raise ValueError(f"{len(labels)} class labels do not fit a prompt of length {length}")

  def head(table: np.ndarray) -> np.ndarray:
    rows = []
    for label in labels:
      ids = _encode(vocabulary, label)
      if not ids:
        raise ValueError(f"Class label {label!r} encodes to no tokens")
      if max(ids) >= table.shape[0]:
        raise ValueError(f"Class label {label!r} has token id {max(ids)} beyond the "
                         f"{table.shape[0]}-row embedding table")
      rows.append(table[ids].mean(axis=0))
    return np.stack(rows) if rows else np.zeros((0, table.shape[1]), table.dtype)
  return _with_fallback(embeddings, head, length - len(labels), fallback, seed,
                        "class-label prompt")


@registry.configurable(module="prompt_init")
def from_string(embeddings: str | np.ndarray, vocabulary: Any, text: str, length: int,
                fallback: Optional[Initializer] = None, seed: Optional[int] = None
                ) -> Initializer:
  """The first positions are the token embeddings of `text`; the rest from `fallback`."""
  ids = _encode(vocabulary, text)[:length]
  return _with_fallback(embeddings, lambda table: table[ids], length - len(ids), fallback,
                        seed, "string prompt")


def _with_fallback(embeddings: str | np.ndarray, head_fn: Callable[[np.ndarray], np.ndarray],
                   rest: int, fallback: Optional[Initializer], seed: Optional[int],
                   what: str) -> Initializer:
  """The rows `head_fn(table)` first, then `rest` rows from `fallback`.

  The default fallback is sampled vocabulary among the first 5,000 ids (or
  all, for smaller tables), drawn with the run's rng unless `seed` pins it
  (as in `sampled_vocab`).
  """
  head: list[np.ndarray] = []

  def init(rng, shape, dtype=jnp.float32):
    p, h = shape
    if params_lib.shapes_only():
      return jnp.zeros(shape, dtype)
    if not head:
      table = _table(embeddings)
      head.append(np.asarray(head_fn(table)))
      if rest and fallback is None:
        head.append(np.array(table[:min(5000, table.shape[0])], np.float32))
    if head[0].shape[1] != h:
      raise ValueError(f"{what}: embeddings have width {head[0].shape[1]}, the prompt {h}")
    if rest == 0:
      return jnp.asarray(head[0], dtype)
    tail = (_sample_rows(head[1], rest, rng, seed).astype(dtype) if fallback is None
            else fallback(rng, (p - head[0].shape[0], h), dtype))
    return jnp.concatenate([jnp.asarray(head[0], dtype), tail], axis=0)
  return init


def from_array(value_PH: np.ndarray) -> Initializer:
  """A prompt given as an array (e.g. a recycled one)."""
  return _fixed(np.asarray(value_PH, np.float32), "prompt array")


@registry.configurable(module="prompt_init")
def from_file(path: str) -> Initializer:
  """A prompt saved as `.npy` ([P, H], any float dtype; cast to the parameter dtype)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Prompt file not found: {path}")

  def read() -> np.ndarray:
    value = load_npy(path)
    if value.dtype.kind not in "fiu":
      raise ValueError(f"Prompt file {path} holds dtype {value.dtype}; expected a float array")
    return value
  return _fixed(read, f"Prompt file {path}")


@registry.configurable(module="prompt_init")
def spot(library: str, probe: str, top_k: int = 1, metric: str = "average") -> Initializer:
  """SPoT transfer (Vu et al. 2022): the source prompt most like a probe prompt.

  `probe` is a prompt trained briefly on the target task (a `.npy`);
  `library` a folder of source prompts (prompts/spot.py). top_k=1 takes the
  most similar source's prompt; k > 1 their similarity-weighted average.
  The library is read when the prompt is really initialized, not when shapes
  are traced or a checkpoint is restored.
  """
  from prompt_tuning.prompts import spot as spot_lib
  if top_k < 1:
    raise ValueError(f"top_k={top_k} must be at least 1")
  if metric not in spot_lib.METRICS:
    raise ValueError(f"Unknown SPoT similarity {metric!r}; expected one of {spot_lib.METRICS}")
  return _fixed(lambda: spot_lib.transfer(library, probe, top_k, metric)[0],
                f"SPoT prompt from {library}")
