"""Runs of one structure in one process share their jitted train step.

A second run that differs only in its seed, its prompt's initializer or its
backbone's values must not trace or compile again, and must train exactly as
it would alone; anything that changes the computation (the prompt's shape,
the dropout switch, the logical-axis rules) must get its own step.
"""

import jax
import numpy as np

from prompt_tuning import layout

from prompt_tuning.prompts import initializers, soft
from prompt_tuning.runtime import partitioning
from prompt_tuning.runtime import setup as setup_lib
from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, ModelSpec
from prompt_tuning.train import loop, optimizers
from prompt_tuning.train.specs import ReportSpec
from tests.conftest import TINY_T5X_CONFIG, fixture_path

LENGTHS = {"inputs": 16, "targets": 4}


def _spec(prompt_PH, rate=0.0):
  return ModelSpec(TINY_T5X_CONFIG.replace(dropout_rate=rate), fixture_path("t5x_tiny_checkpoint"),
                   soft.SoftPrompt(prompt_PH.shape[0], init=initializers.from_array(prompt_PH)))


def _step_for(spec, dropout=False, config=partitioning.PartitioningConfig()):
  setup = setup_lib.abstract(spec, config)
  opt = optimizers.prompt_tuning_adafactor()
  opt_sh = partitioning.optimizer_shardings(jax.eval_shape(opt.init, setup.trainable),
                                            setup.trainable, setup.trainable_shardings,
                                            setup.mesh)
  return loop.jit_train_step(setup.model, opt, 1e-4, dropout, setup.mesh,
                             setup.trainable_shardings, opt_sh, setup.frozen_shardings,
                             partitioning_config=config)


def test_equal_structures_get_one_step_and_different_ones_their_own():
  rng = np.random.RandomState(0)
  a = _step_for(_spec(rng.randn(4, 4).astype(np.float32)))
  b = _step_for(_spec(rng.randn(4, 4).astype(np.float32)))  # another initializer
  assert a is b
  assert _step_for(_spec(rng.randn(6, 4).astype(np.float32))) is not a  # prompt shape
  assert _step_for(_spec(rng.randn(4, 4).astype(np.float32), 0.1), dropout=True) is not a
  other_rules = partitioning.PartitioningConfig(
      logical_axis_rules=(("batch", None),) + partitioning.STANDARD_RULES)
  assert _step_for(_spec(rng.randn(4, 4).astype(np.float32)), config=other_rules) is not a
  # The optimizer factory returns one object per argument set, so it keys the cache.
  assert optimizers.prompt_tuning_adafactor() is optimizers.prompt_tuning_adafactor()
  assert optimizers.prompt_tuning_adafactor(0.1) is not optimizers.prompt_tuning_adafactor()


def _train(model_dir, prompt_PH, seed, rate=0.1):
  import tests.tiny_tasks  # noqa: F401
  loop.train(model_dir=str(model_dir), model=_spec(prompt_PH, rate),
             data=DataSpec("pt_test_sentiment", LENGTHS, 8, seed=0), train_steps=3,
             checkpoint=CheckpointSpec(period=3), seed=seed,
             report=ReportSpec(log_period=1, progress=False))
  return np.load(layout.prompt_file(str(model_dir), 3))


def test_a_shared_step_trains_the_second_run_exactly_as_it_would_alone(tmp_path):
  rng = np.random.RandomState(1)
  first_PH, second_PH = rng.randn(4, 4).astype(np.float32), rng.randn(4, 4).astype(np.float32)
  loop._TRAIN_STEPS.clear()
  alone = _train(tmp_path / "alone", second_PH, seed=1)
  loop._TRAIN_STEPS.clear()
  _train(tmp_path / "first", first_PH, seed=0)
  (step,) = loop._TRAIN_STEPS.values()
  compiled = step._cache_size()
  shared = _train(tmp_path / "second", second_PH, seed=1)
  assert list(loop._TRAIN_STEPS.values()) == [step], "the second run built another step"
  assert step._cache_size() == compiled, "the second run traced the step again"
  np.testing.assert_array_equal(shared, alone)
  # The seed is an argument of the shared step: with dropout on, another seed
  # trains another prompt from the same start.
  reseeded = _train(tmp_path / "reseeded", second_PH, seed=2)
  assert not np.array_equal(reseeded, alone)
