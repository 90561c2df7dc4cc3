"""Prompt initializers from Lester et al. (2021) and the original library.

Each factory returns a Flax initializer `(rng, shape, dtype) -> [P, H]`; P and
H are the shape's, so the prompt length is bound once, on the module. Those
that start from the backbone also take `context`, a `base.InitContext` with
its embedding table [V, H] and the task's vocabulary: the setup
(`runtime.setup.materialize`) builds it from the arrays it has just read and
the prompt modules hand it on (`base.param`). An explicit `embeddings` (another
checkpoint, a `.npy` file or an array) is used instead of the context's table.

Initializers that read (a table from a path, a prompt file) read only when
they really run: handed a context (the setup's init) or called eagerly.
Traced without a context (`jax.eval_shape` of a model's init: the abstract
setup phase) they read nothing and return a stand-in of the right shape that
fails if it is ever computed. Only a [P, H] array, never the table, enters
the compiled init: sampled rows are drawn with the initializer's key (so they
follow the run's seed) and gathered on the host.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import registry
from prompt_tuning.prompts import base
from prompt_tuning.prompts import provenance
from prompt_tuning.prompts.base import InitContext
from prompt_tuning.prompts.provenance import load_npy  # noqa: F401  (re-export)

Initializer = Callable[..., jax.Array]


def load_embeddings(source: str) -> np.ndarray:
  """The [V, H] embedding table from a `.npy` file or a T5X / HF checkpoint."""
  if source.endswith(".npy"):
    table = load_npy(source)
  else:
    from prompt_tuning import readers  # Only this source needs the readers.
    table = readers.read_array(source, provenance.EMBEDDING)
  if table.ndim != 2:
    raise ValueError(f"Embedding table from {source} has shape {table.shape}; expected [V, H]")
  return np.asarray(table, np.float32)


def tracing_shape(rng: Any, context: Optional[InitContext]) -> bool:
  """Whether an initializer that reads is only traced for its shape: traced
  with no context (`jax.eval_shape` of the model's init). It must not read."""
  return context is None and isinstance(rng, jax.core.Tracer)


def stand_in(shape: Sequence[int], dtype: Any, what: str) -> jax.Array:
  """The value of an initializer traced for its shape only: computing it is an error."""
  def fail():
    raise ValueError(f"{what} was computed without an init context: initialize the model "
                     "through runtime.setup (which hands the prompt modules one), or call the "
                     "initializer with context=InitContext(...)")
  return jax.pure_callback(fail, jax.ShapeDtypeStruct(tuple(shape), dtype))


def _same_checkpoint(path: str, other: Optional[str]) -> bool:
  return other is not None and os.path.realpath(path) == os.path.realpath(other)


def _table_for(embeddings: str | np.ndarray | None, context: Optional[InitContext], rng: Any,
               read: list, what: str) -> Optional[np.ndarray]:
  """The table an initializer starts from; None while only its shape is traced.

  `embeddings` given in memory is used as is; given as a path it is read
  (once per initializer, kept in `read`), unless it names the checkpoint
  whose table the context already holds. Otherwise the context's table.
  """
  if embeddings is not None and not isinstance(embeddings, str):
    return np.asarray(embeddings)
  if tracing_shape(rng, context):
    return None
  if isinstance(embeddings, str):
    if (context is not None and context.embeddings is not None
        and _same_checkpoint(embeddings, context.checkpoint)):
      return np.asarray(context.embeddings)
    if not read:
      read.append(load_embeddings(embeddings))
    return read[0]
  if context is None or context.embeddings is None:
    why = ("this model has no checkpoint (ModelSpec.checkpoint is None)" if context is not None
           else "it was called without an init context")
    raise ValueError(f"{what} starts from the backbone's embedding table, but {why}: the setup "
                     "(runtime.setup) hands the prompt modules the table it reads, or set "
                     "`embeddings` (a checkpoint, a .npy file or a [V, H] array)")
  return np.asarray(context.embeddings)


def _vocabulary_for(vocabulary: Any, context: Optional[InitContext], what: str) -> Any:
  """The explicit vocabulary, else the context's (the task's)."""
  if vocabulary is not None:
    return vocabulary
  if context is not None and context.vocabulary is not None:
    return context.vocabulary
  raise ValueError(f"{what} tokenizes text, but has no vocabulary: train / eval / infer hand "
                   "the prompt modules the task's input vocabulary (runtime.setup.materialize's "
                   "`vocabulary`), or set `vocabulary`")


def _check_width(table: np.ndarray, shape: Sequence[int], what: str) -> None:
  if len(shape) != 2 or table.shape[1] != shape[1]:
    raise ValueError(f"{what}: the embedding table has width {table.shape[1]} but the prompt "
                     f"parameter has shape {tuple(shape)} ([prompt length, model width])")


def _fixed(read: Callable[[Optional[InitContext]], np.ndarray], what: str) -> Initializer:
  """An initializer returning the [P, H] value `read(context)` gives, read on first real use.

  The value is kept for later calls with the same context (a prompt bank's rows).
  """
  kept: list[tuple[Optional[InitContext], np.ndarray]] = []

  def init(rng, shape, dtype=jnp.float32, *, context: Optional[InitContext] = None):
    if not kept or kept[0][0] is not context:
      if tracing_shape(rng, context):
        return stand_in(shape, dtype, what)
      kept[:] = [(context, np.asarray(read(context)))]
    return _checked(kept[0][1], shape, dtype, what)
  return init


def _checked(value: np.ndarray, shape: Sequence[int], dtype: Any, what: str) -> jax.Array:
  if tuple(shape) != value.shape:
    raise ValueError(f"{what} has shape {value.shape} but the prompt parameter has shape "
                     f"{tuple(shape)} ([prompt length, model width])")
  return jnp.asarray(value, dtype)


@registry.configurable(module="prompt_init")
def random_uniform(scale: float = 0.5) -> Initializer:
  """Uniform in [-scale, scale] (the paper's random initialization)."""
  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, -scale, scale)
  return init


def _rows_among(table: np.ndarray, first_n: Optional[int],
                binding: str = "prompt_init.sampled_vocab.first_n") -> np.ndarray:
  """The first `first_n` rows of `table` (all for None), checked against its size."""
  limit = table.shape[0] if first_n is None else first_n
  if not 0 < limit <= table.shape[0]:
    # The default (5,000, T5's most frequent pieces) does not fit a small vocabulary
    # such as the quickstart backbones' bytes: say which binding to set.
    raise ValueError(f"first_n={first_n} must be in [1, {table.shape[0]}] (the vocabulary "
                     f"size): bind {binding} (e.g. --gin.{binding}=259 for the byte "
                     "vocabulary's ids) or use prompts/random_uniform.gin")
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
def sampled_vocab(*, embeddings: str | np.ndarray | None = None,
                  first_n: Optional[int] = 5000, seed: Optional[int] = None) -> Initializer:
  """Each prompt position is the embedding of a random token among the first N.

  The paper samples from the 5,000 most common tokens; T5's SentencePiece ids
  are roughly frequency-ordered, so `first_n` limits to the lowest ids.

  The rows are drawn with the initializer's rng, which comes from the run's
  seed (`train.seed`): different seeds give different rows, and so do the
  members of a prompt bank (`base.stacked` gives each its own key). An
  explicit `seed` pins the rows instead, whatever the run's seed (every
  member of a bank then starts from the same rows).

  Args:
    embeddings: None (default) samples the backbone's table, from the init
      context; or another table: a checkpoint path, a `.npy` file or a
      [V, H] array.
    first_n: sample among the first N ids (None: all).
    seed: pins the draw (see above).
  """
  if first_n is not None and first_n < 1:
    raise ValueError(f"first_n={first_n} must be at least 1")
  read: list[np.ndarray] = []

  def init(rng, shape, dtype=jnp.float32, *, context: Optional[InitContext] = None):
    table = _table_for(embeddings, context, rng, read, "sampled_vocab")
    if table is None:
      return stand_in(shape, dtype, "sampled-vocabulary prompt")
    population = _rows_among(table, first_n)
    _check_width(table, shape, "sampled-vocabulary prompt")
    return _sample_rows(population, shape[0], rng, seed).astype(dtype)
  return init


def _encode(vocabulary: Any, text: str) -> list[int]:
  ids = vocabulary.encode(text)
  return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


@registry.configurable(module="prompt_init")
def class_labels(labels: Sequence[str], *, embeddings: str | np.ndarray | None = None,
                 vocabulary: Any = None, fallback: Optional[Initializer] = None,
                 seed: Optional[int] = None) -> Initializer:
  """The first positions are the labels' embeddings (each the mean of its sub-tokens).

  Remaining positions come from `fallback` (sampled vocabulary by default).

  Args:
    labels: the class labels, one prompt position each.
    embeddings: None (default) for the backbone's table (the init context);
      or another table, as in `sampled_vocab`.
    vocabulary: None (default) tokenizes with the task's input vocabulary
      (the init context); or anything with `encode(str) -> ids`.
    fallback: the initializer of the remaining positions.
    seed: pins the default fallback's draw (as in `sampled_vocab`).
  """
  labels = tuple(labels)

  def head(table: np.ndarray, vocab: Any, length: int) -> np.ndarray:
    if len(labels) > length:
      raise ValueError(f"{len(labels)} class labels do not fit a prompt of length {length}")
    rows = []
    for label in labels:
      ids = _encode(vocab, label)
      if not ids:
        raise ValueError(f"Class label {label!r} encodes to no tokens")
      if max(ids) >= table.shape[0]:
        raise ValueError(f"Class label {label!r} has token id {max(ids)} beyond the "
                         f"{table.shape[0]}-row embedding table")
      rows.append(np.asarray(table[ids], np.float32).mean(axis=0))
    return np.stack(rows) if rows else np.zeros((0, table.shape[1]), np.float32)
  return _with_fallback(embeddings, vocabulary, head, fallback, seed, "class-label prompt")


@registry.configurable(module="prompt_init")
def from_string(text: str, *, embeddings: str | np.ndarray | None = None,
                vocabulary: Any = None, fallback: Optional[Initializer] = None,
                seed: Optional[int] = None) -> Initializer:
  """The first positions are the token embeddings of `text`; the rest from `fallback`.

  `embeddings`, `vocabulary`, `fallback` and `seed` as in `class_labels`; a
  text longer than the prompt is cut to its length.
  """
  def head(table: np.ndarray, vocab: Any, length: int) -> np.ndarray:
    return np.asarray(table[_encode(vocab, text)[:length]], np.float32)
  return _with_fallback(embeddings, vocabulary, head, fallback, seed, "string prompt")


def _with_fallback(embeddings: str | np.ndarray | None, vocabulary: Any,
                   head_fn: Callable[[np.ndarray, Any, int], np.ndarray],
                   fallback: Optional[Initializer], seed: Optional[int],
                   what: str) -> Initializer:
  """The rows `head_fn(table, vocabulary, length)` first, the rest from `fallback`.

  The default fallback is sampled vocabulary among the first 5,000 ids (or
  all, for smaller tables), drawn with the run's rng unless `seed` pins it
  (as in `sampled_vocab`).
  """
  read: list[np.ndarray] = []

  def init(rng, shape, dtype=jnp.float32, *, context: Optional[InitContext] = None):
    table = _table_for(embeddings, context, rng, read, what)
    if table is None:
      return stand_in(shape, dtype, what)
    _check_width(table, shape, what)
    p, h = shape
    head = head_fn(table, _vocabulary_for(vocabulary, context, what), p)
    rest = p - head.shape[0]
    if rest == 0:
      return jnp.asarray(head, dtype)
    tail = (_sample_rows(table[:min(5000, table.shape[0])], rest, rng, seed).astype(dtype)
            if fallback is None else base.call_init(fallback, rng, (rest, h), dtype, context))
    return jnp.concatenate([jnp.asarray(head, dtype), tail], axis=0)
  return init


def from_array(value_PH: np.ndarray) -> Initializer:
  """A prompt given as an array (e.g. a recycled one): nothing to read."""
  value = np.asarray(value_PH, np.float32)

  def init(rng, shape, dtype=jnp.float32):
    del rng
    return _checked(value, shape, dtype, "prompt array")
  return init


@registry.configurable(module="prompt_init")
def from_file(path: str, backbone: Optional[str] = None,
              allow_backbone_mismatch: bool = False) -> Initializer:
  """A saved prompt: a `.npy` [P, H] (any float dtype; cast), a PEFT adapter folder, or
  a training run's best/ folder (MODEL_DIR/best, the prompt of its best evaluation).

  Args:
    path: the prompt file or folder.
    backbone: the checkpoint the prompt is loaded onto, which the prompt's
      provenance sidecar must name (see `provenance.check`). None (default)
      is the model's own backbone: its fingerprint comes from the init
      context's table, already in memory.
    allow_backbone_mismatch: load a prompt of another backbone anyway.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Prompt file not found: {path}")

  def read(context: Optional[InitContext]) -> np.ndarray:
    fingerprint, checkpoint = None, backbone
    if (context is not None and context.embeddings is not None and context.config is not None
        and (backbone is None or _same_checkpoint(backbone, context.checkpoint))):
      # Computed only if there is a sidecar to check.
      fingerprint = lambda: provenance.fingerprint(context.config, context.embeddings)  # noqa: E731
      checkpoint = context.checkpoint
    return provenance.load_prompt(path, backbone=fingerprint, checkpoint=checkpoint,
                                  allow_mismatch=allow_backbone_mismatch)
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
  return _fixed(lambda context: spot_lib.transfer(library, probe, top_k, metric)[0],
                f"SPoT prompt from {library}")
