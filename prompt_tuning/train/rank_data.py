"""Training batches for the rank-classification task variants (`..._rank`).

Those tasks write one example per candidate, each with `is_correct` and a
`rank_group` shared by the candidates of one original example (evaluation
scores them one by one). For training, the candidates of an example are put
back together, so the correct one is the positive and the wrong ones are the
negatives:

    encoder_input_tokens     [B, L]     the input, once
    candidate_target_tokens  [B, C, T]  every candidate (0 pads; an empty
                                        row is no candidate)
    is_correct               [B, C]     1 for positives

`positive_targets` turns such a batch into an ordinary one that trains on
the correct candidate alone (the token-level loss); the rank losses
(train/rank.py) use the grouped batch.

Order: the task is read unshuffled (the candidates of an example come
together), grouped, then shuffled with a seeded buffer, one permutation per
epoch; a restart skips the batches already consumed and sees the same data.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np

from prompt_tuning.models.t5 import shift_right
from prompt_tuning.runtime import data as data_lib

GROUP_FEATURES = ("is_correct", "rank_group")
SHUFFLE_BUFFER = 1000  # seqio's default shuffle buffer


def is_rank_task(task: Any, split: str) -> bool:
  """Whether `task` (a seqio Task) writes candidates with is_correct and rank_group."""
  import seqio
  if isinstance(task, seqio.Mixture):
    subtasks = [t for t in task.tasks if split in t.splits]
    flags = {is_rank_task(t, split) for t in subtasks}
    if True in flags:
      raise ValueError(f"Mixture {task.name} holds rank-classification tasks; rank training "
                       "reads one task at a time: train on the _rank task itself")
    return False
  if split not in task.splits:
    return False
  spec = data_lib.element_spec(task, split)  # Built once per task object and split.
  return all(f in spec for f in GROUP_FEATURES)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def group_candidates(examples: Iterable[Mapping[str, Any]]) -> Iterator[list[Mapping[str, Any]]]:
  """Consecutive examples with the same rank_group, as lists."""
  for _, members in itertools.groupby(examples, key=lambda ex: _text(ex["rank_group"])):
    yield list(members)


def _shuffled(items: Iterable[Any], rng: np.random.RandomState,
              buffer_size: int) -> Iterator[Any]:
  """A seeded buffer shuffle (as tf.data's): each item leaves at a random buffer slot."""
  buffer: list[Any] = []
  for item in items:
    if len(buffer) < buffer_size:
      buffer.append(item)
      continue
    i = rng.randint(buffer_size)
    yield buffer[i]
    buffer[i] = item
  rng.shuffle(buffer)
  yield from buffer


def pack_groups(groups: list[list[Mapping[str, Any]]], feature_lengths: Mapping[str, int],
                num_candidates: int, task_name: str) -> dict[str, np.ndarray]:
  """Grouped candidates as [B, L] inputs, [B, C, T] targets and [B, C] is_correct."""
  b, length, t = len(groups), feature_lengths["inputs"], feature_lengths["targets"]
  inputs = np.zeros((b, length), np.int32)
  targets = np.zeros((b, num_candidates, t), np.int32)
  correct = np.zeros((b, num_candidates), np.float32)
  for i, group in enumerate(groups):
    if len(group) > num_candidates:
      raise ValueError(f"Example {_text(group[0]['rank_group'])!r} of {task_name} has "
                       f"{len(group)} candidates, more than the {num_candidates} of the first "
                       "example; rank training needs at most that many per example")
    ids = np.asarray(group[0]["inputs"])[:length]
    inputs[i, :len(ids)] = ids
    for j, ex in enumerate(group):
      ids = np.asarray(ex["targets"])[:t]
      targets[i, j, :len(ids)] = ids
      correct[i, j] = float(bool(ex["is_correct"]))
  return dict(encoder_input_tokens=inputs, candidate_target_tokens=targets, is_correct=correct)


def rank_train_batches(task_name: str, feature_lengths: Mapping[str, int], batch_size: int,
                       split: str = "train", seed: int = 0, shuffle: bool = True,
                       start_batch: int = 0, num_epochs: Optional[int] = None,
                       buffer_size: int = SHUFFLE_BUFFER) -> Iterator[dict[str, np.ndarray]]:
  """Grouped batches (see the module docstring); endless unless `num_epochs` is set."""
  task = data_lib.get_task_or_mixture(task_name)
  if not is_rank_task(task, split):
    raise ValueError(f"{task_name} has no {list(GROUP_FEATURES)} features on split {split!r}; "
                     "rank training needs a rank-classification task (a _rank variant)")
  num_candidates = None

  def epoch_groups(epoch: int) -> Iterator[list[Mapping[str, Any]]]:
    ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1,
                          try_in_mem_cache=False)
    groups = group_candidates(ds.as_numpy_iterator())
    if shuffle:
      groups = _shuffled(groups, np.random.RandomState([seed, epoch]), buffer_size)
    return groups

  def batches() -> Iterator[dict[str, np.ndarray]]:
    nonlocal num_candidates
    epochs = itertools.count() if num_epochs is None else range(num_epochs)
    pending: list[list[Mapping[str, Any]]] = []
    for epoch in epochs:
      seen = False
      for group in epoch_groups(epoch):
        seen = True
        num_candidates = num_candidates or len(group)
        pending.append(group)
        if len(pending) == batch_size:
          yield pack_groups(pending, feature_lengths, num_candidates, task_name)
          pending = []
      if not seen:
        break

  it = itertools.islice(batches(), start_batch, None)
  first = next(it, None)
  if first is None:
    raise ValueError(f"Split {split!r} of {task_name} yielded no batch of {batch_size} "
                     "examples (is it empty?)")
  yield first
  yield from it


def positive_targets(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """An ordinary batch whose target is each example's (first) correct candidate.

  Examples without a correct candidate get loss weight 0.
  """
  correct = np.asarray(batch["is_correct"]) > 0
  pick = np.argmax(correct, axis=-1)
  targets = np.take_along_axis(batch["candidate_target_tokens"], pick[:, None, None],
                               axis=1)[:, 0]
  weights = (targets > 0) & np.any(correct, axis=-1, keepdims=True)
  return dict(encoder_input_tokens=np.asarray(batch["encoder_input_tokens"]),
              decoder_input_tokens=np.asarray(shift_right(targets)).astype(np.int32),
              decoder_target_tokens=targets.astype(np.int32),
              decoder_loss_weights=weights.astype(np.float32))
