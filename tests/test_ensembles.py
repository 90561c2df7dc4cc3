"""Prompt ensembles as in Lester et al. 2021, section 7 (issue 15 point 3): N prompts,
each trained on the full task from its own seed, combined by majority vote."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import evaluation
from prompt_tuning.prompts import initializers, multi_task
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime.specs import ModelSpec
from tests.conftest import TINY_T5X_CONFIG, fixture_path


def test_majority_vote_beats_a_confident_minority_and_breaks_ties_by_mean_log_prob():
  """5 prompts, 3 candidates, hand-built.

  Example 0: three prompts prefer candidate 2 by a little, two prefer candidate 0 by
  a lot: the vote picks 2 although the mean log-probability prefers 0.
  Example 1: candidates 0 and 1 get two votes each, 2 gets one. The stated tie rule:
  among the tied candidates, the higher mean log-probability over all prompts wins
  (here 1, although 0 has the lower index); a full tie goes to the lower index
  (example 2).
  """
  s = np.zeros((5, 3, 3), np.float32)  # [prompts, examples, candidates]
  s[0:3, 0] = [-1.1, -5.0, -1.0]     # three votes for 2
  s[3:5, 0] = [-0.1, -9.0, -20.0]    # two confident votes for 0
  s[0:2, 1] = [-1.0, -3.0, -4.0]     # two votes for 0
  s[2:4, 1] = [-3.0, -0.1, -4.0]     # two votes for 1
  s[4, 1] = [-3.0, -4.0, -1.0]       # one vote for 2
  s[:, 2] = -1.0                     # votes 0, 0, 1, 1, 2 with equal margins
  s[0:2, 2, 0] = s[2:4, 2, 1] = s[4, 2, 2] = -0.5
  mean = s.mean(axis=0)
  assert mean[0].argmax() == 0 and mean[1, 1] > mean[1, 0] and mean[2, 0] == mean[2, 1]
  got = np.asarray(evaluation.ensemble_rank(jnp.asarray(s), "majority_vote"))
  np.testing.assert_array_equal(got, [2, 1, 0])
  np.testing.assert_array_equal(evaluation.ensemble_rank(jnp.asarray(s), "mean_log_prob"),
                                mean.argmax(-1))
  # The default method is the paper's majority vote.
  np.testing.assert_array_equal(evaluation.ensemble_rank(jnp.asarray(s)), got)


def test_decoded_answers_vote_with_the_stated_tie_rule():
  texts = [["cat", "a", "x"],    # prompt 0
           ["dog", "b", "y"],    # prompt 1
           ["dog", "a", "z"],    # prompt 2
           ["cat", "b", "w"],    # prompt 3
           ["dog", "c", "v"]]    # prompt 4
  scores = np.asarray([[-0.1, -3.0, -1.0],
                       [-2.0, -1.0, -1.0],
                       [-2.0, -3.0, -1.0],
                       [-0.1, -1.0, -1.0],
                       [-2.0, -0.1, -1.0]])
  got = evaluation.ensemble_vote(texts, scores)
  # 3 votes beat 2 confident ones; the score is the voters' mean.
  assert got[0] == ("dog", pytest.approx(-2.0))
  # "a" and "b" tie at 2 votes: "b"'s voters have the higher mean score.
  assert got[1] == ("b", pytest.approx(-1.0))
  # Five different answers with equal scores: the lowest-numbered prompt's.
  assert got[2] == ("x", pytest.approx(-1.0))


def _examples(task_name):
  import seqio
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      {"inputs": 32, "targets": 4}, split="train", shuffle=False)
  return [(bytes(ex["inputs_pretokenized"].numpy()), int(ex["task_index"].numpy()))
          for ex in ds]


def test_every_member_trains_on_the_full_task_unless_bagging_is_asked():
  import tests.tiny_tasks  # noqa: F401
  from prompt_tuning.tasks import local_files
  from tests.tiny_tasks import SPLIT_SIZES
  fixture_path("t5_spm.model")
  full = _examples(local_files.ensemble_task("pt_test_sentiment", 3))
  assert local_files.ensemble_task("pt_test_sentiment", 3) == "pt_test_sentiment_ensemble3"
  by_input = collections.defaultdict(list)
  for text, index in full:
    by_input[text].append(index)
  # Every example once per prompt (a few inputs repeat in the data: compare multisets).
  counts = collections.Counter(text for text, _ in full)
  assert len(full) == 3 * SPLIT_SIZES["train"]
  assert all(sorted(v) == sorted([0, 1, 2] * (counts[t] // 3)) for t, v in by_input.items())
  bagged = _examples(local_files.ensemble_task("pt_test_sentiment", 3, "bagging"))
  assert len(bagged) == SPLIT_SIZES["train"]
  shares = collections.Counter(index for _, index in bagged)
  assert set(shares) == {0, 1, 2} and all(v < SPLIT_SIZES["train"] for v in shares.values())
  with pytest.raises(ValueError, match="sampling='boosting'"):
    local_files.ensemble_task("pt_test_sentiment", 3, "boosting")


def _bank_at_init(seed, num_prompts=4, length=3):
  ckpt = fixture_path("t5x_tiny_checkpoint")
  init = initializers.sampled_vocab()
  spec = ModelSpec(TINY_T5X_CONFIG, ckpt, multi_task.PromptBank(num_prompts, length, init=init))
  return np.asarray(model_setup.build(spec, seed=seed).trainable["encoder_prompt"]["prompts"])


def test_members_start_from_different_seeds():
  """Each bank row gets its own key, so its own sampled vocabulary; another run seed,
  another bank."""
  table = np.load(fixture_path("tiny_embeddings_32128x4.npy"))
  bank = _bank_at_init(seed=0)
  rows = [[int(np.flatnonzero((table == r).all(axis=1)).min()) for r in member]
          for member in bank]
  assert all(max(r) < 5000 for r in rows)
  assert len({tuple(r) for r in rows}) == 4, rows
  assert not np.array_equal(bank, _bank_at_init(seed=1))
