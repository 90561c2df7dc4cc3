"""Learning-rate schedules in T5X's terms, and the rate on every logged step."""

import json
import math
import os

import jax
import numpy as np
import pytest

from prompt_tuning.train import optimizers
from prompt_tuning.train import schedules
from prompt_tuning.train.schedules import LearningRateSchedule
from tests.test_binaries import TINY_MODEL_GIN, _run


def _rates(schedule, steps):
  return [float(schedule(s)) for s in steps]


@pytest.mark.parametrize("jit", [False, True])
def test_each_factor_follows_t5x_formula(jit):
  def call(schedule, steps):
    fn = jax.jit(schedule) if jit else schedule
    return [float(fn(s)) for s in steps]
  steps = [0, 1, 5, 10, 20, 30, 60]
  # The default is the paper's constant 0.3.
  assert call(LearningRateSchedule(), steps) == pytest.approx([0.3] * len(steps))
  warm = LearningRateSchedule(factors="constant * linear_warmup", base_learning_rate=1.0,
                              warmup_steps=10)
  assert call(warm, steps) == pytest.approx([min(1.0, s / 10) for s in steps])
  rsqrt = LearningRateSchedule(factors="constant * linear_warmup * rsqrt_decay",
                               base_learning_rate=1.0, warmup_steps=10)
  assert call(rsqrt, steps) == pytest.approx(
      [min(1.0, s / 10) / math.sqrt(max(s, 10)) for s in steps], rel=1e-6)
  normalized = LearningRateSchedule(factors="constant * rsqrt_normalized_decay",
                                    base_learning_rate=0.5, warmup_steps=10)
  assert call(normalized, steps) == pytest.approx(
      [0.5 * math.sqrt(10) / math.sqrt(max(s, 10)) for s in steps], rel=1e-6)
  linear = LearningRateSchedule(factors="constant * linear_warmup * linear_decay",
                                base_learning_rate=1.0, warmup_steps=10, decay_steps=20)
  assert call(linear, steps) == pytest.approx(
      [min(1.0, s / 10) * min(1.0, max(0.0, 1 - (s - 10) / 20)) for s in steps], abs=1e-6)
  cosine = LearningRateSchedule(factors="constant * cosine_decay", base_learning_rate=1.0,
                                decay_steps=30, min_learning_rate=0.01)
  want = [max(0.01, 0.5 * (1 + math.cos(math.pi * min(s / 30, 1.0)))) for s in steps]
  assert call(cosine, steps) == pytest.approx(want, abs=1e-6)
  assert call(cosine, [60])[0] == pytest.approx(0.01)  # no new cycle after the decay


@pytest.mark.parametrize("kwargs,words", [
    (dict(factors="constant * warmup"), "unknown factor(s) ['warmup']"),
    (dict(factors="constant * linear_warmup"), "linear_warmup needs warmup_steps > 0"),
    (dict(factors="constant * cosine_decay"), "cosine_decay needs decay_steps"),
    (dict(warmup_steps=-1), "warmup_steps must be an integer >= 0"),
])
def test_bad_schedules_are_refused_when_built(kwargs, words):
  with pytest.raises(ValueError, match=None) as e:
    LearningRateSchedule(**kwargs)
  assert words in str(e.value)


def test_warmup_longer_than_the_run_is_a_problem():
  schedule = LearningRateSchedule(factors="constant * linear_warmup", warmup_steps=50)
  assert schedules.warmup_problem(schedule, 50) is None
  assert "warmup_steps=50 exceeds TRAIN_STEPS=49" in schedules.warmup_problem(schedule, 49)
  assert schedules.warmup_problem(0.3, 1) is None


def test_adafactor_remembers_its_schedule_and_stays_shared():
  schedule = LearningRateSchedule(factors="constant * linear_warmup", warmup_steps=4)
  opt = optimizers.prompt_tuning_adafactor(schedule)
  assert optimizers.learning_rate_of(opt) is schedule
  assert optimizers.prompt_tuning_adafactor(LearningRateSchedule(
      factors="constant * linear_warmup", warmup_steps=4)) is opt  # equal schedules: one object
  assert optimizers.learning_rate_of(optimizers.prompt_tuning_adafactor()) == 0.3


def test_every_logged_step_carries_the_rate_of_its_update(tmp_path):
  (tmp_path / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  run = str(tmp_path / "run")
  assert _run("train", run, "--gin.TRAIN_STEPS=5", "--gin.CHECKPOINT_PERIOD=5",
              "--gin.ReportSpec.log_period=1",
              "--gin.prompt_tuning_adafactor.learning_rate=@LearningRateSchedule()",
              "--gin.LearningRateSchedule.factors='constant * linear_warmup'",
              "--gin.LearningRateSchedule.warmup_steps=4") == 0
  records = [json.loads(line) for line in open(os.path.join(run, "train", "metrics.jsonl"))]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  # Step s is the update made after s - 1 others (T5X counts from 0).
  np.testing.assert_allclose([r["learning_rate"] for r in records],
                             [0.0, 0.075, 0.15, 0.225, 0.3], rtol=1e-6)
