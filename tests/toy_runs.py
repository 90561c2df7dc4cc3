"""Toy runs shared by the tests of methods over one frozen T5 (input-dependent prompts,
recursion, frozen readers): a toy batch, training in process, the binaries on the T5X
fixture, and what a run leaves on disk."""

import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning import trees as tree_lib
from prompt_tuning.cli import main as main_lib
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.runtime import setup as setup_lib
from prompt_tuning.train import step as step_lib
from tests.conftest import fixture_path
from tests.test_binaries import FIXTURE_MODEL_GIN
from tests.test_binaries import t5x_fixture_arrays as fixture_arrays  # noqa: F401

CFG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
               num_decoder_layers=1, head_dim=8, mlp_dim=32)


def toy_batch(n: int = 8, seed: int = 0) -> dict:
  """Inputs [op, a, b, EOS]; the target depends on the input (op picks a or b)."""
  rng = np.random.RandomState(seed)
  op = rng.randint(0, 2, n)
  a, b = rng.randint(10, 40, n), rng.randint(10, 40, n)
  enc = np.stack([op + 3, a, b, np.ones(n, int)], 1).astype(np.int32)
  ans = np.where(op == 0, a, b)
  tgt = np.stack([ans, np.ones(n, int)], 1).astype(np.int32)
  dec = np.concatenate([np.zeros((n, 1), np.int32), tgt[:, :-1]], 1)
  return dict(encoder_input_tokens=jnp.asarray(enc), decoder_input_tokens=jnp.asarray(dec),
              decoder_target_tokens=jnp.asarray(tgt),
              decoder_loss_weights=jnp.ones(tgt.shape, jnp.float32))


def train_in_process(spec, batch, steps: int = 40, lr: float = 0.03, seed: int = 0):
  """(setup, trained trainable, [loss per step]) of adam on one batch."""
  s = setup_lib.build(spec, seed=seed)
  opt = optax.adam(lr)
  step = jax.jit(step_lib.make_train_step(s.model, opt))
  trainable, state, losses = s.trainable, opt.init(s.trainable), []
  for i in range(steps):
    trainable, state, m = step(trainable, state, s.frozen, batch, jax.random.PRNGKey(i))
    losses.append(float(m["loss"]))
  return s, trainable, losses


def run_binary(command: str, tmp_path, model_lines, run_file: str, *flags) -> int:
  """`prompt-tuning COMMAND` on the T5X fixture with FIXTURE_MODEL_GIN + model_lines."""
  (tmp_path / "model.gin").write_text("\n".join([FIXTURE_MODEL_GIN, *model_lines]) + "\n")
  gin.clear_config()
  try:
    return main_lib.main([
        command, f"--gin_file={tmp_path / 'model.gin'}", f"--gin_file={run_file}",
        f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'", *flags])
  finally:
    gin.clear_config()


def exported(run_dir, step: int) -> dict[str, np.ndarray]:
  """The exported prompt arrays of a step (their provenance sidecars left out)."""
  folder = os.path.join(run_dir, "prompts", f"step_{step}")
  return {f: np.load(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
          if f.endswith(".npy")}


def summary(run_dir) -> dict:
  return json.load(open(os.path.join(run_dir, "train_summary.json")))


def digest(tree) -> str:
  return tree_lib.tree_digest(tree)
