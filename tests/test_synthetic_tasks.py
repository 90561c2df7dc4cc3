"""The quickstart's synthetic task family."""

import numpy as np
import pytest
import seqio

import prompt_tuning.tasks  # noqa: F401  (registers)
from prompt_tuning.tasks import metrics, synthetic

LENGTHS = synthetic.FEATURE_LENGTHS


def _examples(name, split="validation", n=20):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False,
                                                    num_epochs=1)
  return list(ds.take(n).as_numpy_iterator())


@pytest.mark.parametrize("task", sorted(synthetic.TASKS))
def test_each_task_has_its_instruction_and_right_answers(task):
  oracle = {"copy": lambda w: w, "reverse": lambda w: "".join(reversed(w)),
            "sort": lambda w: "".join(sorted(w)), "first": lambda w: w[:1],
            "last": lambda w: w[-1:], "count": lambda w: f"{len(w)}",
            "rotate": lambda w: w[1:] + w[0]}
  for ex in _examples(f"synthetic_{task}"):
    text = ex["inputs_pretokenized"].decode()
    prefix = f"{task}: "
    assert text.startswith(prefix)
    w = text[len(prefix):]
    assert synthetic.MIN_LEN <= len(w) <= synthetic.MAX_LEN and set(w) <= set(synthetic.ALPHABET)
    assert ex["targets_pretokenized"].decode() == oracle[task](w)
    # Byte vocabulary: letters are their byte value + 3, then EOS.
    assert ex["inputs"].tolist() == [b + 3 for b in text.encode()] + [1]


def test_held_out_format_has_no_instruction():
  for ex in _examples("synthetic_reverse_bare"):
    w = ex["inputs_pretokenized"].decode()
    assert ":" not in w and ex["targets_pretokenized"].decode() == w[::-1]


def test_examples_are_deterministic_and_splits_disjoint():
  a = synthetic.examples("sort", "train", 300)
  assert a == synthetic.examples("sort", "train", 300)
  train = set(synthetic.words("train", 20000, salt="reverse/bare"))
  val = set(synthetic.words("validation", 512, salt="reverse/bare"))
  assert len(val) > 300 and not train & val
  assert all(synthetic.is_held_out_word(w) for w in val)


def test_pretraining_mixture_covers_every_task_with_instructions():
  mixture = seqio.get_mixture_or_task("synthetic_pretrain")
  assert sorted(t.name for t in mixture.tasks) == sorted(f"synthetic_{t}" for t in synthetic.TASKS)
  ds = mixture.get_dataset(LENGTHS, split="train", shuffle=True, seed=0, num_epochs=1)
  vocab = seqio.ByteVocabulary()
  seen = {vocab.decode([int(t) for t in ex["inputs"] if t > 1]).split(":")[0]
          for ex in ds.take(200).as_numpy_iterator()}
  assert seen == set(synthetic.TASKS)


def test_vocabulary_fits_the_backbones():
  from prompt_tuning import backbones
  vocab = seqio.ByteVocabulary()
  for size in backbones.SIZES:
    assert vocab.vocab_size <= backbones.backbone_config(size).vocab_size


def test_exact_match_metric():
  assert metrics.exact_match(["ab", "c"], ["ab", "d"]) == {"exact_match": 50.0}
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.exact_match(["a", "b"], ["a"])
