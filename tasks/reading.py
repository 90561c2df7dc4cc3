"""A reading skill for the frozen-reader evidence: look a key up in a list of pairs.

The quickstart's backbone (`synthetic_pretrain`) only ever transforms one
short word; it never learned to find a span in a longer input and copy it,
so a prompt alone cannot turn it into a reader. `reading_pretrain` adds that
skill to the same synthetic tasks, in a format of its own:

  reading_lookup   "kag fo mivu, zed fo parl, lo tesk ? zed fo" -> "parl"

Comma-separated pairs, each some key words (1-3 words of 2-3 letters) and
then one value word (3-5 letters); after " ? ", one of the keys; the answer
is that key's value. Half the examples have a distractor key that shares all
but one word with the asked key, so matching one word is not enough. Letters
are all of a-z (the synthetic words use only a-h), so the skill is copying
any letters.

The open-book QA set of the frozen-reader benchmark
(prompt_tuning.retrieval.synthetic: "bak dos home? bak dos home tarun" ->
"tarun", one passage per segment) is not this format: question first, no
list, no " ? " marker, made-up names and relation words. A prompt still has
to map the QA format onto the skill, and the QA set stays held out.

Inputs fit `FEATURE_LENGTHS['inputs']` (48 bytes with EOS). Examples are a
pure function of (split, count); one asked key in five (by hash) is reserved
for validation and test.
"""

from __future__ import annotations

import string

import numpy as np

from prompt_tuning.tasks import metrics, synthetic

FEATURE_LENGTHS = {"inputs": 48, "targets": 8}
MIN_PAIRS, MAX_PAIRS = 2, 4
# The lookup's share of `reading_pretrain` against 1.0 for each synthetic task.
LOOKUP_RATE = 5.0


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
    if len(text) < FEATURE_LENGTHS["inputs"]:
      return text, values[0], asked


def examples(split: str, count: int) -> dict[str, list[str]]:
  """The first `count` lookups of a split (deterministic)."""
  rng = np.random.RandomState(synthetic._seed("reading/lookup", split))  # pylint: disable=protected-access
  held_out = split != "train"
  inputs, targets = [], []
  while len(inputs) < count:
    text, answer, key = lookup_example(rng)
    if synthetic.is_held_out_word(key) == held_out:
      inputs.append(text)
      targets.append(answer)
  return {"inputs": inputs, "targets": targets}


def _source():
  import tensorflow as tf

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(examples(split, synthetic.SPLIT_SIZES[split]))
  return synthetic._in_memory_source_class()(  # pylint: disable=protected-access
      dataset_fn, splits=tuple(synthetic.SPLIT_SIZES),
      num_input_examples=dict(synthetic.SPLIT_SIZES))


def register() -> None:
  """Registers `reading_lookup` and the `reading_pretrain` mixture (idempotent)."""
  import seqio
  if "reading_pretrain" in seqio.MixtureRegistry.names():
    return
  synthetic.register()
  vocab = seqio.ByteVocabulary()
  features = {"inputs": seqio.Feature(vocab, add_eos=True),
              "targets": seqio.Feature(vocab, add_eos=True)}
  seqio.TaskRegistry.add(
      "reading_lookup", source=_source(),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=[metrics.exact_match])
  seqio.MixtureRegistry.add(
      "reading_pretrain",
      [(f"synthetic_{t}", 1.0) for t in synthetic.TASKS] + [("reading_lookup", LOOKUP_RATE)])
