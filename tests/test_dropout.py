"""Dropout follows the model's rate (issue 15 point 4): a configured rate is never
silently ignored, and the prompt-tuning run config trains with T5X's 0.1."""

import json
import logging
import os

import gin
import numpy as np
import pytest

from prompt_tuning.cli import main as main_lib
from prompt_tuning.prompts import initializers, soft
from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, ModelSpec
from prompt_tuning.train import loop
from prompt_tuning.train.specs import DropoutSpec, ReportSpec
from tests.conftest import TINY_T5X_CONFIG, fixture_path
from tests.test_binaries import TINY_MODEL_GIN

LENGTHS = {"inputs": 16, "targets": 4}


def test_the_switch_follows_the_rate_and_turning_it_off_is_logged(caplog):
  with_rate, without = TINY_T5X_CONFIG.replace(dropout_rate=0.1), TINY_T5X_CONFIG
  assert loop.dropout_enabled(with_rate, None) is True
  assert loop.dropout_enabled(without, None) is False
  with caplog.at_level(logging.WARNING, logger=loop.__name__):
    assert loop.dropout_enabled(with_rate, False) is False
  assert "dropout_rate=0.1 but DropoutSpec.enabled=False" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger=loop.__name__):
    assert loop.dropout_enabled(without, True) is False
  assert "has no effect" in caplog.text


def _first_loss(model_dir, rate, seed, **kwargs):
  """Step 1's training loss: the prompt and the data are fixed, only `seed` varies."""
  import tests.tiny_tasks  # noqa: F401
  ckpt = fixture_path("t5x_tiny_checkpoint")
  prompt_PH = np.random.RandomState(0).randn(4, 4).astype(np.float32)
  spec = ModelSpec(TINY_T5X_CONFIG.replace(dropout_rate=rate), ckpt,
                   soft.SoftPrompt(4, init=initializers.from_array(prompt_PH)))
  summary = loop.train(model_dir=str(model_dir), model=spec,
                       data=DataSpec("pt_test_sentiment", LENGTHS, 8, seed=0),
                       train_steps=1, checkpoint=CheckpointSpec(period=1), seed=seed,
                       report=ReportSpec(log_period=1, progress=False), **kwargs)
  return summary["last_metrics"]["loss"], summary["dropout_rate"]


def test_a_positive_rate_draws_masks_from_the_seed_and_zero_draws_none(tmp_path):
  a, rate_a = _first_loss(tmp_path / "a", 0.3, seed=0)
  b, _ = _first_loss(tmp_path / "b", 0.3, seed=1)
  assert rate_a == 0.3
  assert a != b, "the dropout key (from the seed) did not change the loss"
  c, rate_c = _first_loss(tmp_path / "c", 0.0, seed=0)
  d, _ = _first_loss(tmp_path / "d", 0.0, seed=1)
  assert rate_c == 0.0 and c == d
  assert c != a  # dropout did change the loss
  # An explicit False switches a positive rate off: no masks at all.
  e, rate_e = _first_loss(tmp_path / "e", 0.3, seed=1, dropout=DropoutSpec(enabled=False))
  assert rate_e == 0.0 and e == c


@pytest.mark.parametrize("extra,expected", [((), 0.1), (("--gin.DROPOUT_RATE=0.0",), 0.0)],
                         ids=["default", "user_set"])
def test_the_prompt_finetune_config_trains_with_t5x_dropout(tmp_path, extra, expected):
  (tmp_path / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  run = tmp_path / "run"
  gin.clear_config()
  try:
    code = main_lib.main([
        "train", f"--gin_file={tmp_path / 'tiny_model.gin'}",
        "--gin_file=runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{run}'",
        "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", "--gin.BATCH_SIZE=8",
        "--gin.TRAIN_STEPS=1", "--gin.CHECKPOINT_PERIOD=1", *extra])
  finally:
    gin.clear_config()
  assert code == 0
  summary = json.load(open(os.path.join(run, "train_summary.json")))
  assert summary["dropout_rate"] == expected
