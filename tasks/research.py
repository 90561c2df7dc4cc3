"""Task formats for the research suite (`python -m benchmarks.research`).

The quickstart's held-out task (reverse a bare word) is too easy to tell
methods apart: every method reaches 98-100% on it. This module widens the
synthetic family with classification skills, so that rank classification has
zero-shot baselines above 0%, and with held-out formats of four kinds.

Pretraining (`research_pretrain`): the seven instruction tasks of
`synthetic_pretrain` plus two classification tasks with their instructions:

  sorted: cabd -> no          sorted: abcd -> yes    (half the words are sorted)
  most: abcab -> a            (the most frequent letter; ties: the first in
                               alphabetical order)

Held-out formats (nothing in pretraining shows them; a prompt must stand in
for the missing instruction, or more):

  research_reverse_bare     generation     cabd -> dbac
  research_compose_bare     composition    cabd -> dcba (sort, then reverse:
                                           two pretrained skills in one step)
  research_sorted_bare      classification cabd -> no / abcd -> yes, scored by
                                           rank classification over CLASS_LABELS
  research_marked_multitask multi-task     four formats told apart by a mark
                                           the backbone never saw as an
                                           instruction:  <cabd -> dbac
                                           cabd+ -> abcd   cabd. -> d   #cabd -> 4
                                           Every example also carries its
                                           `task_index` (task-aware methods
                                           read it; input-dependent prompts
                                           must read the mark).

Words come from `synthetic.words`, so validation and test words never occur
in a training split. Examples are a pure function of (task, split).
"""

from __future__ import annotations

import collections
from typing import Callable

from prompt_tuning.tasks import metrics, synthetic

CLASS_LABELS = ("yes", "no")


def is_sorted(w: str) -> str:
  return "yes" if list(w) == sorted(w) else "no"


def most_frequent(w: str) -> str:
  counts = collections.Counter(w)
  return min(counts, key=lambda c: (-counts[c], c))


# Pretraining-only classification skills, with their instructions.
CLASSIFY: dict[str, Callable[[str], str]] = {"sorted": is_sorted, "most": most_frequent}

# name -> (how the input shows the word, the answer); one task_index each.
MARKED: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "reverse": (lambda w: "<" + w, lambda w: w[::-1]),
    "sort": (lambda w: w + "+", lambda w: "".join(sorted(w))),
    "last": (lambda w: w + ".", lambda w: w[-1]),
    "count": (lambda w: "#" + w, lambda w: str(len(w))),
}

HELD_OUT: dict[str, Callable[[str], str]] = {
    "reverse": lambda w: w[::-1],
    "compose": lambda w: "".join(sorted(w))[::-1],
    "sorted": is_sorted,
}

GENERATION = ("research_reverse_bare", "research_compose_bare", "research_marked_multitask")
CLASSIFICATION = ("research_sorted_bare",)


def _words(split: str, count: int, salt: str, half_sorted: bool) -> list[str]:
  words = synthetic.words(split, count, salt=salt)
  if not half_sorted:
    return words
  # Every other word sorted: "yes" and "no" in equal shares (a random word of
  # 3-6 letters is sorted about 5% of the time).
  return ["".join(sorted(w)) if i % 2 else w for i, w in enumerate(words)]


def examples(name: str, split: str, count: int) -> dict[str, list]:
  """The first `count` examples of one research task's split (deterministic)."""
  if name.startswith("pretrain_"):
    skill = name[len("pretrain_"):]
    words = _words(split, count, "research/" + name, half_sorted=skill == "sorted")
    return {"inputs": [f"{skill}: {w}" for w in words],
            "targets": [CLASSIFY[skill](w) for w in words]}
  if name.startswith("marked_"):
    task = name[len("marked_"):]
    show, answer = MARKED[task]
    words = _words(split, count, "research/" + name, half_sorted=False)
    return {"inputs": [show(w) for w in words], "targets": [answer(w) for w in words],
            "task_index": [list(MARKED).index(task)] * len(words)}
  fn = HELD_OUT[name]
  words = _words(split, count, "research/bare/" + name, half_sorted=name == "sorted")
  return {"inputs": words, "targets": [fn(w) for w in words]}


def _source(name: str):
  import tensorflow as tf

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    data = examples(name, split, synthetic.SPLIT_SIZES[split])
    if "task_index" in data:
      data["task_index"] = tf.constant(data["task_index"], tf.int32)
    return tf.data.Dataset.from_tensor_slices(synthetic.string_arrays(data))
  return synthetic._in_memory_source_class()(  # pylint: disable=protected-access
      dataset_fn, splits=tuple(synthetic.SPLIT_SIZES),
      num_input_examples=dict(synthetic.SPLIT_SIZES))


def register() -> None:
  """Registers the research tasks and mixtures (idempotent)."""
  import seqio
  if "research_pretrain" in seqio.MixtureRegistry.names():
    return
  synthetic.register()
  vocab = seqio.ByteVocabulary()
  features = {"inputs": seqio.Feature(vocab, add_eos=True),
              "targets": seqio.Feature(vocab, add_eos=True)}
  preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]

  def add(task_name: str, source_name: str):
    seqio.TaskRegistry.add(task_name, source=_source(source_name),
                           preprocessors=preprocessors, output_features=features,
                           metric_fns=[metrics.exact_match])

  for skill in CLASSIFY:
    add(f"research_pretrain_{skill}", f"pretrain_{skill}")
  seqio.MixtureRegistry.add(
      "research_pretrain",
      [(f"synthetic_{t}", 1.0) for t in synthetic.TASKS]
      + [(f"research_pretrain_{skill}", 1.0) for skill in CLASSIFY])
  for name in HELD_OUT:
    add(f"research_{name}_bare", name)
  for task in MARKED:
    add(f"research_marked_{task}", f"marked_{task}")
  seqio.MixtureRegistry.add("research_marked_multitask",
                            [(f"research_marked_{t}", 1.0) for t in MARKED])
