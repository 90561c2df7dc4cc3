"""seqio data for training and evaluation.

Training batches come from seqio's EncDecFeatureConverter (unpacked, since a
soft prompt is per sequence). The order is a pure function of the seed, so a
restarted run skips the batches it has already consumed and sees exactly the
data an uninterrupted run would.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterator, Mapping, Optional

import numpy as np


def get_task_or_mixture(name: str):
  """A registered seqio Task or Mixture; an unknown name suggests close ones."""
  import seqio
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError as e:
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {close}?" if close else f"; {len(known)} are registered"
    raise ValueError(f"Unknown task or mixture {name!r}{hint}") from e


def check_vocabulary(task: Any, vocab_size: int) -> None:
  """The task's vocabularies must fit the model's embedding table."""
  for name, feature in task.output_features.items():
    size = feature.vocabulary.vocab_size
    if size > vocab_size:
      raise ValueError(f"Task {task.name} feature {name!r} has a vocabulary of {size} ids but "
                       f"the model's embedding table has {vocab_size} rows")


def input_vocabulary(task: Any) -> Optional[Any]:
  """The vocabulary of the task's encoder inputs (None for a task without 'inputs')."""
  feature = task.output_features.get("inputs")
  return feature.vocabulary if feature is not None else None


def check_prompt_budget(prompt_positions: int, feature_lengths: Mapping[str, int],
                        max_encoder_length: Optional[int]) -> None:
  """The prompt plus the inputs must fit the encoder budget `max_encoder_length`.

  The prompt adds its positions (the module's `num_positions`) to
  TASK_FEATURE_LENGTHS['inputs']; with a budget (a model trained or served at
  a fixed encoder length), both together must fit it.
  """
  inputs = feature_lengths.get("inputs")
  if inputs is None:
    raise ValueError(f"TASK_FEATURE_LENGTHS {dict(feature_lengths)} has no 'inputs' length")
  if max_encoder_length is not None and prompt_positions + inputs > max_encoder_length:
    raise ValueError(f"Prompt length {prompt_positions} + inputs length {inputs} = "
                     f"{prompt_positions + inputs} exceeds the encoder budget "
                     f"max_encoder_length={max_encoder_length}; shorten the prompt or the inputs")


def train_batches(task_name: str, feature_lengths: Mapping[str, int], batch_size: int,
                  split: str = "train", seed: int = 0, shuffle: bool = True,
                  start_batch: int = 0, num_epochs: Optional[int] = None,
                  shard_id: int = 0, num_shards: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches, starting at batch `start_batch`; endless unless `num_epochs` is set."""
  import seqio
  import tensorflow as tf
  task = get_task_or_mixture(task_name)
  passthrough = passthrough_features(task, split)
  kwargs = dict(split=split, shuffle=shuffle, num_epochs=num_epochs, seed=seed,
                shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards))
  if isinstance(task, seqio.Mixture):
    kwargs["passthrough_features"] = list(passthrough)
  ds = task.get_dataset(dict(feature_lengths), **kwargs)
  if passthrough:  # seqio passes through sequences: make each scalar a [1] one.
    ds = ds.map(lambda ex: {**ex, **{n: tf.reshape(tf.cast(ex[n], tf.int32), [1])
                                     for n in passthrough}})
  converter = seqio.EncDecFeatureConverter(pack=False, passthrough_features={
      name: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=1) for name in passthrough})
  ds = converter(ds, task_feature_lengths={**feature_lengths, **{n: 1 for n in passthrough}})
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  ds = ds.batch(batch_size, drop_remainder=True).skip(start_batch)
  it = ds.as_numpy_iterator()
  first = next(it, None)
  if first is None:
    raise ValueError(f"Split {split!r} of {task_name} yielded no batch of {batch_size} "
                     "examples (is it empty?)")
  yield _to_model_batch(first)
  for batch in it:
    yield _to_model_batch(batch)


# Per-example int32 features kept next to the model's token arrays, for the
# prompt modules that choose a prompt per example.
PASSTHROUGH_FEATURES = ("task_index",)


# (task, split) -> the element spec of its preprocessed examples. Reading it builds
# the dataset (tf.data traces every preprocessor): about a second for a synthetic
# mixture's subtasks, asked on every train and eval start, by `passthrough_features`
# and by rank_data.is_rank_task alike. seqio tasks hash by identity, and the key
# keeps the task alive.
_SPEC_CACHE: dict[tuple[Any, str], Any] = {}


def element_spec(task: Any, split: str) -> Any:
  """The element spec of one seqio Task's preprocessed, untrimmed examples on
  `split`, found once per task object and split and shared by every caller: read
  it, do not change it."""
  key = (task, split)
  if key not in _SPEC_CACHE:
    _SPEC_CACHE[key] = task.get_dataset(None, split=split, shuffle=False, num_epochs=1,
                                        try_in_mem_cache=False).element_spec
  return _SPEC_CACHE[key]


def passthrough_features(task: Any, split: str) -> tuple[str, ...]:
  """The PASSTHROUGH_FEATURES every (sub)task of `task` produces on `split`."""
  import seqio
  tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]
  found = None
  for t in tasks:
    if split not in t.splits:
      continue
    names = {n for n in PASSTHROUGH_FEATURES if n in element_spec(t, split)}
    found = names if found is None else found & names
  return tuple(sorted(found or ()))


def _to_model_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {k: np.asarray(v) for k, v in batch.items()}
  for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            *PASSTHROUGH_FEATURES):
    if k not in out:
      continue
    out[k] = out[k].astype(np.int32)
    if k in PASSTHROUGH_FEATURES:
      out[k] = out[k].reshape(-1)  # [B, 1] -> [B]
  if "decoder_loss_weights" in out:
    out["decoder_loss_weights"] = out["decoder_loss_weights"].astype(np.float32)
  return out


def eval_examples(task_name: str, split: str, feature_lengths: Mapping[str, int],
                  max_examples: Optional[int] = None) -> list[dict[str, Any]]:
  """Preprocessed examples of a split, in order, with their pretokenized text."""
  task = get_task_or_mixture(task_name)
  if split not in task.splits:
    raise ValueError(f"Task {task_name} has no split {split!r}; it has {list(task.splits)}")
  # Read once, in order: no in-memory cache (which would also need the split's size).
  ds = task.get_dataset(sequence_length=dict(feature_lengths), split=split, shuffle=False,
                        num_epochs=1, try_in_mem_cache=False)
  if max_examples:
    ds = ds.take(max_examples)
  examples = list(ds.as_numpy_iterator())
  if not examples:
    raise ValueError(f"Split {split!r} of {task_name} is empty")
  return examples


def pad_batch(examples: list[Mapping[str, Any]], key: str, length: int) -> np.ndarray:
  """Stacks token lists into [B, length] int32, truncating and zero-padding."""
  out = np.zeros((len(examples), length), np.int32)
  for i, ex in enumerate(examples):
    ids = np.asarray(ex[key])[:length]
    out[i, :len(ids)] = ids
  return out
