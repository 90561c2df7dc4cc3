"""A reading skill for the frozen-reader evidence: copy a span out of a longer input.

The quickstart's backbone (`synthetic_pretrain`) only ever transforms one
short word; it never learned to find a span in a longer input and copy it,
so a prompt alone cannot turn it into a reader. `reading_pretrain` adds that
skill to the same synthetic tasks, in a format of its own:

  reading_tail     "tail: kag fo mivu parl" -> "parl"   (copy the last word:
                   2-5 words of 2-5 letters, any of a-z)

and registers, outside the mixture, a harder key lookup:

  reading_lookup   "kag fo mivu, zed fo parl, lo tesk ? zed fo" -> "parl"
                   (comma-separated pairs of 1-3 key words and one value
                   word; after " ? ", one of the keys; half the examples have
                   a distractor key that differs from the asked one in one
                   word). The small backbone did not learn it: 3,000 steps of
                   pretraining with it at rate 5 left it at 2.3% exact match
                   on unseen lookups, so it is not in `reading_pretrain`.

The open-book QA set of the frozen-reader benchmark
(prompt_tuning.retrieval.synthetic: "bak dos home? bak dos home tarun" ->
"tarun", one passage per segment) is not these formats: no instruction,
question first, made-up names and relation words. A prompt still has to map
the QA format onto the skill, and the QA set stays held out. Letters are all
of a-z (the synthetic words use only a-h), so the skill is copying any letter.

Inputs fit `FEATURE_LENGTHS['inputs']` (EOS included). Examples are a pure
function of (task, split, count); one answer word (tail) or asked key (lookup)
in five, by hash, is reserved for validation and test.
"""

from __future__ import annotations

import string

import numpy as np

from prompt_tuning.tasks import metrics, synthetic

# `reading_pretrain`'s lengths (the tail task's inputs fit 32); the lookup's need 48.
FEATURE_LENGTHS = {"inputs": 32, "targets": 8}
LOOKUP_LENGTHS = {"inputs": 48, "targets": 8}
MIN_PAIRS, MAX_PAIRS = 2, 4
MIN_WORDS, MAX_WORDS = 2, 5
# The tail task's share of `reading_pretrain` against 1.0 for each synthetic task.
TAIL_RATE = 3.0


def _word(rng: np.random.RandomState, low: int, high: int) -> str:
  letters = np.asarray(list(string.ascii_lowercase))
  return "".join(letters[rng.randint(0, 26, size=rng.randint(low, high + 1))])


def lookup_example(rng: np.random.RandomState) -> tuple[str, str, str]:
  """(input, answer, asked key) of one lookup; the input is at most 47 bytes."""
  while True:
    asked = " ".join(_word(rng, 2, 3) for _ in range(rng.randint(1, 4)))
    keys = [asked]
    if " " in asked and rng.rand() < 0.5:
      # A distractor: the asked key with one word replaced.
      words = asked.split()
      words[rng.randint(len(words))] = _word(rng, 2, 3)
      keys.append(" ".join(words))
    while len(keys) < rng.randint(MIN_PAIRS, MAX_PAIRS + 1) or len(keys) < MIN_PAIRS:
      keys.append(" ".join(_word(rng, 2, 3) for _ in range(rng.randint(1, 4))))
    if len(set(keys)) < len(keys):
      continue
    values = [_word(rng, 3, 5) for _ in keys]
    pairs = [f"{k} {v}" for k, v in zip(keys, values)]
    text = ", ".join(pairs[i] for i in rng.permutation(len(pairs))) + f" ? {asked}"
    if len(text) < LOOKUP_LENGTHS["inputs"]:
      return text, values[0], asked


def tail_example(rng: np.random.RandomState) -> tuple[str, str]:
  """(input, answer) of one tail example; the input is at most 31 bytes."""
  while True:
    words = [_word(rng, 2, 5) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS + 1))]
    text = "tail: " + " ".join(words)
    if len(text) < FEATURE_LENGTHS["inputs"]:
      return text, words[-1]


def examples(task: str, split: str, count: int) -> dict[str, list[str]]:
  """The first `count` examples of "tail" or "lookup" in a split (deterministic)."""
  rng = np.random.RandomState(synthetic._seed("reading", task, split))  # pylint: disable=protected-access
  held_out = split != "train"
  inputs, targets = [], []
  while len(inputs) < count:
    if task == "tail":
      text, answer = tail_example(rng)
      key = answer
    else:
      text, answer, key = lookup_example(rng)
    if synthetic.is_held_out_word(key) == held_out:
      inputs.append(text)
      targets.append(answer)
  return {"inputs": inputs, "targets": targets}


def _source(task: str):
  import tensorflow as tf

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(
        synthetic.string_arrays(examples(task, split, synthetic.SPLIT_SIZES[split])))
  return synthetic._in_memory_source_class()(  # pylint: disable=protected-access
      dataset_fn, splits=tuple(synthetic.SPLIT_SIZES),
      num_input_examples=dict(synthetic.SPLIT_SIZES))


def register() -> None:
  """Registers `reading_tail`, `reading_lookup` and `reading_pretrain` (idempotent)."""
  import seqio
  if "reading_pretrain" in seqio.MixtureRegistry.names():
    return
  synthetic.register()
  vocab = seqio.ByteVocabulary()
  features = {"inputs": seqio.Feature(vocab, add_eos=True),
              "targets": seqio.Feature(vocab, add_eos=True)}
  for task in ("tail", "lookup"):
    seqio.TaskRegistry.add(
        f"reading_{task}", source=_source(task),
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos_after_trim],
        output_features=features, metric_fns=[metrics.exact_match])
  seqio.MixtureRegistry.add(
      "reading_pretrain",
      [(f"synthetic_{t}", 1.0) for t in synthetic.TASKS] + [("reading_tail", TAIL_RATE)])
