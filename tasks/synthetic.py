"""A synthetic task family for the quickstart: string tasks over a byte vocabulary.

Every example is a short word of letters from `ALPHABET`; the tasks transform
it, each announced by a textual instruction:

  copy: cabd     -> cabd        reverse: cabd -> dbac
  sort: cabd     -> abcd        first: cabd   -> c
  last: cabd     -> d           count: cabd   -> 4
  rotate: cabd   -> abdc        (the first letter moves to the end)

Registered seqio tasks (byte-level vocabulary, no vocabulary file):
  synthetic_<task>             instruction + word -> answer, for every task
  synthetic_pretrain           mixture of all of them (equal rates), except
                               that `reverse` only ever appears with its
                               instruction
  synthetic_reverse_bare       the held-out format: the bare word, no
                               instruction -> its reverse. Nothing in
                               pretraining shows it; a prompt must learn to
                               stand in for the instruction.
  synthetic_<task>_bare_indexed  every task in the bare format, with an int32
                               `task_index` (its position in TASKS); mixed in
                               `synthetic_bare_multitask` (multi-task prompts).
  synthetic_<task>_rank        rank classification for the tasks with a closed
                               answer set (RANK_CANDIDATES: first, last,
                               count): one example per candidate answer, with
                               `is_correct` and `rank_group` (as the
                               benchmarks' _rank variants). Training groups
                               them again: the correct answer is the positive,
                               the others the negatives.

Examples are a pure function of (task, split). One word in five (by hash)
is reserved for validation and test, so evaluation words never occur in any
training split.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from typing import Callable

import numpy as np

from prompt_tuning.tasks import metrics

ALPHABET = "abcdefgh"
MIN_LEN, MAX_LEN = 3, 6
SPLIT_SIZES = {"train": 50_000, "validation": 512, "test": 512}
# Byte vocabulary (pad 0, EOS 1, UNK 2, bytes at 3..258): 259 ids; the models
# round the embedding table up to 384 rows.
VOCAB_ROWS = 384
FEATURE_LENGTHS = {"inputs": 16, "targets": 8}

TASKS: dict[str, Callable[[str], str]] = {
    "copy": lambda w: w,
    "reverse": lambda w: w[::-1],
    "sort": lambda w: "".join(sorted(w)),
    "first": lambda w: w[0],
    "last": lambda w: w[-1],
    "count": lambda w: str(len(w)),
    "rotate": lambda w: w[1:] + w[:1],
}
HELD_OUT = "reverse"
# Every possible answer of the tasks with a closed answer set.
RANK_CANDIDATES: dict[str, tuple[str, ...]] = {
    "first": tuple(ALPHABET), "last": tuple(ALPHABET),
    "count": tuple(str(n) for n in range(MIN_LEN, MAX_LEN + 1)),
}


def _seed(*parts) -> int:
  digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
  return int.from_bytes(digest[:4], "little")


def is_held_out_word(w: str) -> bool:
  """One word in five (by hash) is reserved for validation and test."""
  return zlib.crc32(w.encode()) % 5 == 0


def words(split: str, count: int, salt: str = "") -> list[str]:
  """`count` random words, a pure function of (split, salt, count).

  Train words and validation/test words come from disjoint parts of the word
  space, so evaluation is on words never seen in training. Drawn once per
  process (every dataset built on a task draws them again otherwise).
  """
  return list(_words(split, count, salt))


@functools.lru_cache(maxsize=128)
def _words(split: str, count: int, salt: str) -> tuple[str, ...]:
  rng = np.random.RandomState(_seed("words", split, salt))
  held_out = split != "train"
  out: list[str] = []
  while len(out) < count:
    n = 2 * (count - len(out)) + 16
    lengths = rng.randint(MIN_LEN, MAX_LEN + 1, size=n)
    letters = np.asarray(list(ALPHABET))[rng.randint(0, len(ALPHABET), size=(n, MAX_LEN))]
    for row, length in zip(letters, lengths):
      w = "".join(row[:length])
      if is_held_out_word(w) == held_out:
        out.append(w)
  return tuple(out[:count])


def examples(task: str, split: str, count: int, instruction: bool = True,
             salt: str = "") -> dict[str, list[str]]:
  """The first `count` examples of a task's split (deterministic)."""
  fn = TASKS[task]
  words_ = words(split, count, salt=task + salt)
  inputs = [f"{task}: {w}" if instruction else w for w in words_]
  return {"inputs": inputs, "targets": [fn(w) for w in words_]}


def rank_examples(task: str, split: str, count: int) -> dict[str, list]:
  """`examples` with each answer's index in RANK_CANDIDATES[task] and an example id."""
  data = examples(task, split, count)
  candidates = RANK_CANDIDATES[task]
  return {**data, "label": [candidates.index(t) for t in data["targets"]],
          "uid": [f"{split}-{i}" for i in range(count)]}


def string_arrays(data: dict[str, list]) -> dict[str, object]:
  """`data` with each list of strings made a numpy object array, for
  `tf.data.Dataset.from_tensor_slices`: the same tf.string elements, but
  converted in one pass (a list of 50,000 strings took about 0.13 s, on every
  dataset built over a split). Other values are kept as they are (a list of
  ints stays int32 there, where an array of them would be int64)."""
  return {k: np.asarray(v, dtype=object) if isinstance(v, list) and v and isinstance(v[0], str)
          else v for k, v in data.items()}


def _source(task: str, instruction: bool, rank: bool = False):
  import tensorflow as tf

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    count = SPLIT_SIZES[split]
    if rank:
      return tf.data.Dataset.from_tensor_slices(string_arrays(rank_examples(task, split, count)))
    data = examples(task, split, count, instruction,
                    salt="" if instruction else "/bare")
    return tf.data.Dataset.from_tensor_slices(string_arrays(data))
  return _in_memory_source_class()(dataset_fn, splits=tuple(SPLIT_SIZES),
                                   num_input_examples=dict(SPLIT_SIZES))


@functools.lru_cache(maxsize=None)
def _in_memory_source_class():
  import seqio  # imported lazily, as everywhere in this module

  class InMemorySource(seqio.FunctionDataSource):
    """A FunctionDataSource whose splits are generated whole, in memory.

    seqio warns about every uncached FunctionDataSource read with shuffling
    (restarts would reshuffle too little). That does not apply here: there
    are no files to shuffle (the generator ignores `shuffle_files`), so the
    source always yields the same examples, and seqio's Task shuffles them
    afterwards with its seeded buffer. Reading with `shuffle=False` gives the
    same dataset without the warning.
    """

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
      del shuffle
      return super().get_dataset(split, shuffle=False, seed=seed, shard_info=shard_info,
                                 **kwargs)

  return InMemorySource


def register() -> None:
  """Registers the tasks and the mixture (idempotent)."""
  import seqio
  if "synthetic_pretrain" in seqio.MixtureRegistry.names():
    return
  vocab = seqio.ByteVocabulary()
  features = {"inputs": seqio.Feature(vocab, add_eos=True),
              "targets": seqio.Feature(vocab, add_eos=True)}
  preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  for task in TASKS:
    seqio.TaskRegistry.add(f"synthetic_{task}", source=_source(task, True),
                           preprocessors=preprocessors, output_features=features,
                           metric_fns=[metrics.exact_match])
  seqio.TaskRegistry.add("synthetic_reverse_bare", source=_source(HELD_OUT, False),
                         preprocessors=preprocessors, output_features=features,
                         metric_fns=[metrics.exact_match])
  seqio.MixtureRegistry.add("synthetic_pretrain", [(f"synthetic_{t}", 1.0) for t in TASKS])
  # Multi-task prompts: every task in the bare format (no instruction), with
  # its position in TASKS as `task_index`; only a task-aware prompt can tell
  # them apart.
  for index, task in enumerate(TASKS):
    seqio.TaskRegistry.add(f"synthetic_{task}_bare_indexed", source=_source(task, False),
                           preprocessors=[_add_task_index(index), *preprocessors],
                           output_features=features, metric_fns=[metrics.exact_match])
  seqio.MixtureRegistry.add("synthetic_bare_multitask",
                            [(f"synthetic_{t}_bare_indexed", 1.0) for t in TASKS])
  # Rank classification, with the benchmarks' candidate expansion and metric.
  from prompt_tuning.tasks import benchmarks, postprocessors
  for task, candidates in RANK_CANDIDATES.items():
    seqio.TaskRegistry.add(f"synthetic_{task}_rank", source=_source(task, True, rank=True),
                           preprocessors=[benchmarks.expand_candidates(candidates),
                                          *preprocessors],
                           output_features=features,
                           postprocess_fn=postprocessors.rank_candidate,
                           metric_fns=[metrics.rank_classification])


def _add_task_index(index: int):
  def preprocess(ds):
    import tensorflow as tf
    return ds.map(lambda ex: {**ex, "task_index": tf.constant(index, tf.int32)})
  return preprocess
