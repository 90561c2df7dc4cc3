"""Small seqio tasks over data the tests make, with the real T5 vocabulary.

Importing registers `pt_test_sentiment` (movie-review sentiment with the label
words 'positive' / 'negative'). Gin files used by CLI tests register it with
`import tests.tiny_tasks`. Needs ../shared/fixtures/t5_spm.model.
"""

import functools
import os

import numpy as np
import seqio
import tensorflow as tf

FIXTURES = os.environ.get("PT_FIXTURES_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared", "fixtures"))
SPM_PATH = os.path.join(FIXTURES, "t5_spm.model")
LABELS = ("negative", "positive")
_POS = ["great", "good", "wonderful", "excellent", "fun"]
_NEG = ["bad", "awful", "terrible", "boring", "dull"]
_FILL = ["the", "movie", "was", "a", "film", "plot", "really", "actors", "story", "very"]
SPLIT_SIZES = {"train": 256, "validation": 48}


def sentiment_examples(split: str) -> dict[str, list[str]]:
  rng = np.random.RandomState({"train": 0, "validation": 1}[split])
  inputs, targets = [], []
  for _ in range(SPLIT_SIZES[split]):
    label = rng.randint(2)
    words = list(rng.choice(_FILL, size=rng.randint(3, 7)))
    words.insert(rng.randint(len(words) + 1), rng.choice(_POS if label else _NEG))
    inputs.append("review: " + " ".join(words))
    targets.append(LABELS[label])
  return {"inputs": inputs, "targets": targets}


def _dataset_fn(split, shuffle_files=False, seed=None):
  del shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices(sentiment_examples(split))


def accuracy(targets, predictions):
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def register() -> None:
  if "pt_test_sentiment" in seqio.TaskRegistry.names() or not os.path.exists(SPM_PATH):
    return
  vocab = seqio.SentencePieceVocabulary(SPM_PATH)
  features = {"inputs": seqio.Feature(vocab, add_eos=True),
              "targets": seqio.Feature(vocab, add_eos=True)}
  seqio.TaskRegistry.add(
      "pt_test_sentiment",
      source=seqio.FunctionDataSource(_dataset_fn, splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=[accuracy])
  seqio.TaskRegistry.add(
      "pt_test_empty",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files=False, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": tf.constant([], tf.string), "targets": tf.constant([], tf.string)}),
          splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=[accuracy])


register()
