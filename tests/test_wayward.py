"""Wayward prompts (Khashabi et al. 2022): gamma * ||P - E(text)||^2 in the train loss.

The expected term is computed with numpy from the embedding table and the
text's token ids (SentencePiece called directly), not by the code under test.
"""

import json
import os

import jax
import numpy as np
import pytest

from prompt_tuning import layout
from prompt_tuning import readers
from prompt_tuning.prompts import initializers, soft
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime.specs import ModelSpec
from prompt_tuning.train import step as step_lib
from prompt_tuning.train import wayward
from tests import test_binaries
from tests.conftest import TINY_CONFIG, fixture_path


class _WordVocabulary:
  """encode(text): one id per word (a stand-in for a task vocabulary)."""
  IDS = {"classify": 7, "the": 8, "review": 9, "sentiment": 10, "now": 11}

  def encode(self, text):
    return [self.IDS[w] for w in text.split()]


def _numpy_term(prompt, table, ids, gamma):
  target = np.zeros_like(prompt)
  target[:len(ids)] = table[ids]
  return gamma * np.sum((prompt - target) ** 2) / prompt.shape[0]


@pytest.mark.parametrize("use_jit", [False, True])
def test_wayward_term_matches_numpy(use_jit):
  prompt_module = soft.SoftPrompt(length=5, init=initializers.random_uniform(0.5))
  setup = model_setup.build(ModelSpec(TINY_CONFIG, None, prompt_module), seed=1)
  text, gamma = "classify the review", 0.3
  objective = step_lib.Objective(wayward=wayward.resolve(
      wayward.Wayward(text, gamma), setup.trainable, setup.frozen, _WordVocabulary()))
  rng = np.random.RandomState(0)
  batch = {"encoder_input_tokens": rng.randint(3, 60, (2, 6)).astype(np.int32),
           "decoder_target_tokens": rng.randint(3, 60, (2, 3)).astype(np.int32)}
  batch["decoder_input_tokens"] = np.pad(batch["decoder_target_tokens"], ((0, 0), (1, 0)))[:, :-1]

  def run(obj):
    def fn(trainable):
      return step_lib.loss_fn(trainable, setup.frozen, setup.model, batch, None, 1e-4, obj)
    return (jax.jit(fn) if use_jit else fn)(setup.trainable)
  loss, metrics = run(objective)
  plain_loss, _ = run(step_lib.Objective())
  prompt = np.asarray(setup.trainable["encoder_prompt"]["prompt"])
  table = np.asarray(setup.frozen["token_embedder"]["embedding"])
  want = _numpy_term(prompt, table, [7, 8, 9], gamma)
  assert float(metrics["wayward_loss"]) == pytest.approx(want, rel=1e-5)
  assert float(metrics["wayward_distance"]) == pytest.approx(want / gamma, rel=1e-5)
  assert float(metrics["task_loss"]) == pytest.approx(float(plain_loss), rel=1e-6)
  assert float(loss) == pytest.approx(float(plain_loss) + want, rel=1e-5)
  summary = step_lib.summarize(dict(jax.device_get(metrics), loss=loss))
  assert summary["loss"] == pytest.approx(summary["task_loss"] + summary["wayward_loss"])


def test_wayward_text_longer_than_the_prompt_is_one_clear_error():
  table = np.zeros((64, 4), np.float32)
  with pytest.raises(ValueError, match=r"is 5 tokens long but the prompt has 3 positions.*"
                                       r"PROMPT_LENGTH = 5"):
    wayward.target("classify the review sentiment now", _WordVocabulary(), table, 3)
  with pytest.raises(ValueError, match="Wayward.text is empty"):
    wayward.Wayward("")
  setup = model_setup.build(ModelSpec(TINY_CONFIG, None, soft.SoftPrompt(length=3)), seed=0)
  with pytest.raises(ValueError, match=r"prompt_param='decoder_prompt/prompt' is not a "
                                       r"trainable parameter.*encoder_prompt/prompt"):
    wayward.resolve(wayward.Wayward("the", prompt_param="decoder_prompt/prompt"),
                    setup.trainable, setup.frozen, _WordVocabulary())


def _train(workdir, name, *extra):
  run = str(workdir / name)
  code = test_binaries._run("train", run, "--gin_file=runs/wayward.gin", "--gin.TRAIN_STEPS=30",
                            "--gin.CHECKPOINT_PERIOD=30", "--gin.ReportSpec.log_period=10", *extra)
  return code, run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A folder with the T5X fixture's model file (test_binaries' tiny model, 4 prompt positions)."""
  fixture_path("t5_spm.model")
  root = tmp_path_factory.mktemp("wayward")
  (root / "tiny_model.gin").write_text(test_binaries.TINY_MODEL_GIN)
  return root


def test_gamma_pulls_the_prompt_toward_the_embedded_text(workdir):
  """Trained through the train binary and runs/wayward.gin, with gamma 0 and 1."""
  import sentencepiece as spm
  text = "Classify the review"
  ids = spm.SentencePieceProcessor(model_file=fixture_path("t5_spm.model")).encode(text)
  table = np.asarray(readers.read_array(fixture_path("t5x_tiny_checkpoint"),
                                        "token_embedder/embedding"), np.float32)
  distances, start = {}, None
  for gamma in (0.0, 1.0):
    code, run = _train(workdir, f"gamma_{gamma}", f"--gin.WAYWARD_TEXT='{text}'",
                       f"--gin.WAYWARD_GAMMA={gamma}")
    assert code == 0
    prompt = np.load(layout.prompt_file(run, 30))
    distances[gamma] = _numpy_term(prompt, table, ids, 1.0)
    logs = [json.loads(line) for line in open(os.path.join(run, "train", "metrics.jsonl"))]
    assert {"task_loss", "wayward_loss", "wayward_distance"} <= set(logs[-1])
    assert logs[-1]["loss"] == pytest.approx(logs[-1]["task_loss"] + logs[-1]["wayward_loss"])
    assert logs[-1]["wayward_loss"] == pytest.approx(gamma * logs[-1]["wayward_distance"])
    first = logs[0]["wayward_distance"]
    start = first if start is None else start
  print(f"distance to E(text): gamma 0 -> {distances[0.0]:.4f}, gamma 1 -> {distances[1.0]:.4f}"
        f" (first logged {start:.4f})")
  assert distances[1.0] < 0.5 * distances[0.0], distances


def test_wayward_text_longer_than_the_prompt_fails_the_binary_with_one_line(workdir, capsys):
  code, _ = _train(workdir, "too_long", "--gin.WAYWARD_TEXT='" + "the movie was great " * 3 + "'")
  assert code == 2
  err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
  assert len(err) == 1 and "tokens long but the prompt has 4 positions" in err[0]
