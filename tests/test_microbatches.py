"""Microbatches (T5X's Trainer.num_microbatches): k parts, one update, the same result.

With dropout off, a step over k microbatches equals the single-batch step up
to float32 rounding: gradients, updated prompts and optimizer state agree to
a relative 1e-5 of the largest entry (atol = 1e-5 * max|x|) and the metrics
to rtol 1e-5 (plain SGD, where the update is the gradient); after two steps of
the paper's Adafactor, which divides by the root of a running mean of squared
gradients and so magnifies rounding in near-zero entries, to 2e-4 of the
largest entry. With dropout on, the step is deterministic. The sharded case runs
in test_sharding.py's 8-device process (`test_microbatches_on_a_sharded_data_axis`).
"""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import soft
from prompt_tuning.runtime import freezing
from prompt_tuning.runtime import validation
from prompt_tuning.train import optimizers
from prompt_tuning.train import step as step_lib
from prompt_tuning.train import wayward as wayward_lib
from tests.conftest import REPO_ROOT, TINY_CONFIG

RTOL = 1e-5  # float32 rounding of sums taken in another order
ADAFACTOR_RTOL = 2e-4


def _assert_close(a, b, what, rtol=RTOL):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(np.abs(x).max(initial=0.0), np.abs(y).max(initial=0.0), 1e-12)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale, err_msg=what)


def _batch(b=8, seed=0):
  rng = np.random.RandomState(seed)
  tgt = rng.randint(2, TINY_CONFIG.vocab_size, size=(b, 5)).astype(np.int32)
  tgt[::3, 3:] = 0  # uneven target lengths: parts have different token counts
  return dict(encoder_input_tokens=rng.randint(2, TINY_CONFIG.vocab_size, size=(b, 7)
                                               ).astype(np.int32),
              decoder_input_tokens=np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], 1),
              decoder_target_tokens=tgt, decoder_loss_weights=(tgt > 0).astype(np.float32))


def _setup(rate=0.0):
  model = T5(TINY_CONFIG.replace(dropout_rate=rate), encoder_prompt=soft.SoftPrompt(length=3))
  params = params_lib.init_params(model, jax.random.PRNGKey(0))
  trainable, frozen = freezing.split(params, freezing.trainable_mask(
      params, freezing.PROMPT_TUNING_RULES))
  return model, trainable, frozen


def _step(model, opt, k, dropout=False, objective=step_lib.Objective()):
  return jax.jit(step_lib.make_train_step(model, opt, 1e-4, dropout, objective,
                                          num_microbatches=k))


def test_split_interleaves_rows():
  parts = step_lib.split_microbatches({"x": np.arange(8)}, 2)
  assert np.asarray(parts["x"]).tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]


@functools.lru_cache(maxsize=None)
def _single_batch_sgd():
  """The model, its parameters and the single-batch sgd(1) step's output: the reference
  of every k below, compiled and run once per process."""
  model, trainable, frozen = _setup()
  sgd = optax.sgd(1.0)
  one = _step(model, sgd, 1)(trainable, sgd.init(trainable), frozen, _batch(),
                             jax.random.PRNGKey(0))
  return model, trainable, frozen, one


@pytest.mark.parametrize("k", [2, 8])
def test_microbatched_update_equals_the_single_batch_update(k):
  model, trainable, frozen, one = _single_batch_sgd()
  rng = jax.random.PRNGKey(0)
  # sgd(1): the update is minus the gradient, compared directly.
  sgd = optax.sgd(1.0)
  many = _step(model, sgd, k)(trainable, sgd.init(trainable), frozen, _batch(), rng)
  _assert_close(one[0], many[0], f"sgd update, k={k}")
  assert not np.allclose(one[0]["encoder_prompt"]["prompt"],
                         trainable["encoder_prompt"]["prompt"])  # it did move
  for name in ("loss", "cross_entropy_sum", "z_loss_sum", "correct_sum", "num_tokens",
               "grad_norm"):
    np.testing.assert_allclose(many[2][name], one[2][name], rtol=RTOL, err_msg=name)
  if k != 2:
    return
  # The paper's Adafactor: prompt and optimizer state after two steps.
  opt = optimizers.prompt_tuning_adafactor()
  states = []
  for kk in (1, k):
    step, t, s = _step(model, opt, kk), trainable, opt.init(trainable)
    for seed in (0, 1):
      t, s, _ = step(t, s, frozen, _batch(seed=seed), rng)
    states.append((t, s))
  _assert_close(states[0], states[1], f"adafactor state, k={k}", ADAFACTOR_RTOL)


def test_wayward_term_keeps_its_weight_over_microbatches():
  model, trainable, frozen = _setup()
  target = np.random.RandomState(3).randn(3, TINY_CONFIG.emb_dim).astype(np.float32)
  objective = step_lib.Objective(wayward=("encoder_prompt/prompt", target, 0.5))
  sgd = optax.sgd(1.0)
  rng = jax.random.PRNGKey(0)
  one = _step(model, sgd, 1, objective=objective)(trainable, sgd.init(trainable), frozen,
                                                   _batch(), rng)
  two = _step(model, sgd, 4, objective=objective)(trainable, sgd.init(trainable), frozen,
                                                   _batch(), rng)
  _assert_close(one[0], two[0], "wayward update")
  for name in ("loss", "task_loss", "wayward_loss", "wayward_distance"):
    np.testing.assert_allclose(two[2][name], one[2][name], rtol=RTOL, err_msg=name)


def test_dropout_over_microbatches_is_deterministic():
  model, trainable, frozen = _setup(rate=0.3)
  opt = optimizers.prompt_tuning_adafactor()
  step = _step(model, opt, 2, dropout=True)
  runs = [step(trainable, opt.init(trainable), frozen, _batch(), jax.random.PRNGKey(5))
          for _ in range(2)]
  for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  quiet = _step(model, opt, 2)(trainable, opt.init(trainable), frozen, _batch(),
                               jax.random.PRNGKey(5))
  assert float(quiet[2]["loss"]) != float(runs[0][2]["loss"])  # dropout did act


def test_microbatches_must_divide_the_per_device_batch():
  assert validation.microbatch_problem(2, 16, 8) is None
  assert validation.microbatch_problem(4, 16, 8) == (
      "NUM_MICROBATCHES=4 does not divide the per-device batch 2 (BATCH_SIZE=16 over 8 "
      "data-parallel replicas); expected a divisor of it")
  assert "must be a positive integer; got 0" in validation.microbatch_problem(0, 16, 1)


def test_benchmark_script_help_and_dry_run(tmp_path):
  proc = subprocess.run([sys.executable, "benchmarks/microbatches.py", "--help"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "--ks" in proc.stdout, proc.stderr[-2000:]
  from benchmarks import microbatches
  assert microbatches.main(["--dry_run", "--out_dir", str(tmp_path), "--ks", "1,2",
                            "--batch", "4", "--input_length", "8", "--timed", "1"]) == 0
  result = json.load(open(tmp_path / "microbatches.json"))
  assert [r["num_microbatches"] for r in result["rows"]] == [1, 2]
  # The same batch and weights: the same loss, whatever k.
  np.testing.assert_allclose(result["rows"][1]["loss"], result["rows"][0]["loss"], rtol=RTOL)
  assert "| 2 | 4 | 8 |" in (tmp_path / "microbatches.md").read_text()
