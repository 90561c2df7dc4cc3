"""Attention one example at a time (`T5Config.attention_example_loop`).

The loop is a schedule, not a different model: every test here runs the same
model with the loop on and off and asks for the same values, gradients,
dropout masks and decoded tokens. EXAMPLE_LOOP_MIN_SCORES is lowered to 1 so
that the tiny model's attentions take the loop; counting the scans (`lax.map`) in
the traced program shows they did.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding
from prompt_tuning.models import layers, t5
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import deep
from tests.conftest import TINY_CONFIG, xla_flags

# Padding in the second row, so the mask's bias term differs per example.
ENC = jnp.array([[5, 6, 7, 8, 9, 10, 11, 1], [12, 13, 1, 0, 0, 0, 0, 0]])
DEC_IN = jnp.array([[0, 12, 13, 14], [0, 15, 0, 0]])
DEC_TGT = jnp.array([[12, 13, 14, 1], [15, 1, 0, 0]])
# One layer per stack (compiling is most of these tests' time): 3 attentions per pass.
ONE_LAYER = dict(num_encoder_layers=1, num_decoder_layers=1)
ATTENTIONS = 3


@pytest.fixture
def loop_everywhere(monkeypatch):
  monkeypatch.setattr(layers, "EXAMPLE_LOOP_MIN_SCORES", 1)


def _models(with_deep_prompt: bool = False, **changes):
  """(loop on, loop off) over the same parameters."""
  out = []
  for loop in (True, False):
    cfg = TINY_CONFIG.replace(attention_example_loop=loop, **ONE_LAYER, **changes)
    prompt = deep.DeepPrompt(length=3, model_config=cfg) if with_deep_prompt else None
    out.append(T5(cfg, encoder_prompt=prompt))
  return out


def _loss(model, p, rng):
  logits = model.apply({"params": p}, ENC, DEC_IN, DEC_TGT, enable_dropout=True,
                       rngs={"dropout": rng})
  logp = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.take_along_axis(logp, DEC_TGT[..., None], -1) * (DEC_TGT[..., None] > 0))


def _while_loops(model, p, rng) -> int:
  return str(jax.make_jaxpr(lambda p: _loss(model, p, rng))(p)).count(" scan[")


@pytest.fixture(scope="module")
def deep_prompt_params():
  return params_lib.init_params(_models(with_deep_prompt=True)[0], jax.random.PRNGKey(0))


def test_the_loop_gives_the_batched_values_gradients_and_dropout(loop_everywhere,
                                                                deep_prompt_params):
  # 8-bit masks here; both widths at the layer level below (cheaper to compile).
  on, off = _models(with_deep_prompt=True, dropout_rate=0.2, dropout_mask_bits=8)
  p = deep_prompt_params
  rng = jax.random.PRNGKey(3)
  assert _while_loops(on, p, rng) == ATTENTIONS
  assert _while_loops(off, p, rng) == 0

  value_and_grad = jax.jit(jax.value_and_grad(_loss, argnums=1), static_argnums=0)
  loss_on, grads_on = value_and_grad(on, p, rng)
  loss_off, grads_off = value_and_grad(off, p, rng)
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
  flat_on, flat_off = jax.tree.leaves(grads_on), jax.tree.leaves(grads_off)
  assert len(flat_on) == len(flat_off)
  for a, b in zip(flat_on, flat_off):
    # Float32 sums in another order: equal to rounding, relative to the leaf's scale.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
  # The prefixes' gradient is not zero, so it went through the loop's keys and values.
  assert float(jnp.abs(grads_on["encoder_prompt"]["encoder_self_key"]).max()) > 0
  # Dropout is live (another key changes the loss), and both forms drew the same masks.
  other_key = value_and_grad(on, p, jax.random.PRNGKey(4))[0]
  assert abs(float(other_key) - float(loss_on)) > 1e-4


@pytest.mark.parametrize("bits", [8, 32])
def test_one_layer_draws_the_same_dropout_masks_in_both_forms(loop_everywhere, bits):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 8, 16).astype(np.float32))
  visible = jnp.array([[True] * 8, [True] * 5 + [False] * 3])
  bias = (jnp.asarray(rng.randn(1, 2, 8, 8).astype(np.float32)),  # shared by the batch
          layers.mask_to_bias(visible[:, None, :] & visible[:, :, None]))  # per example
  on, off = (layers.MultiHeadAttention(num_heads=2, head_dim=8, dropout_rate=0.3,
                                       dropout_mask_bits=bits, example_loop=loop)
             for loop in (True, False))
  p = on.init(jax.random.PRNGKey(0), x, x, bias)
  keys = {"dropout": jax.random.PRNGKey(5)}
  apply = lambda layer, x: layer.apply(p, x, x, bias, deterministic=False, rngs=keys)  # noqa: E731
  assert str(jax.make_jaxpr(lambda x: apply(on, x))(x)).count(" scan[") == 1
  out_on, out_off = apply(on, x), apply(off, x)
  np.testing.assert_allclose(out_on, out_off, rtol=1e-5, atol=1e-6)
  assert not np.allclose(out_on, on.apply(p, x, x, bias))  # the dropout is live
  grad = lambda layer: jax.grad(lambda x: jnp.sum(apply(layer, x) ** 2))(x)  # noqa: E731
  np.testing.assert_allclose(grad(on), grad(off), rtol=1e-5, atol=1e-5)


def test_decoding_and_scoring_are_the_same_with_the_loop(loop_everywhere):
  on, off = _models()
  p = params_lib.init_params(on, jax.random.PRNGKey(1))
  for method in ("greedy", "beam"):
    cfg = decoding.DecodingConfig(method=method, max_decode_length=6, eos_id=-1, num_beams=3)
    generate = jax.jit(decoding.generate, static_argnums=(0, 3))
    tokens_on, scores_on = generate(on, p, ENC, cfg)
    tokens_off, scores_off = generate(off, p, ENC, cfg)
    np.testing.assert_array_equal(tokens_on, tokens_off)
    np.testing.assert_allclose(scores_on, scores_off, rtol=1e-5)
  candidates = jnp.array([[12, 13, 1], [15, 1, 0]])
  score = jax.jit(decoding.score_candidates, static_argnums=0)
  np.testing.assert_allclose(score(on, p, ENC, candidates), score(off, p, ENC, candidates),
                             rtol=1e-5)


def test_short_attentions_keep_the_batched_form():
  # At the default threshold none of the tiny model's attentions loop.
  on, _ = _models()
  p = params_lib.init_params(on, jax.random.PRNGKey(0))
  assert layers.EXAMPLE_LOOP_MIN_SCORES > TINY_CONFIG.num_heads * ENC.shape[1] ** 2
  assert _while_loops(on, p, jax.random.PRNGKey(0)) == 0


def test_the_loop_is_on_for_one_cpu_device_and_off_for_several():
  assert t5.attention_example_loop(TINY_CONFIG.replace(attention_example_loop=False)) is False
  assert t5.attention_example_loop(TINY_CONFIG.replace(attention_example_loop=True)) is True
  code = ("import jax; from prompt_tuning.models import t5; from tests.conftest import TINY_CONFIG;"
          "print(jax.device_count(), t5.attention_example_loop(TINY_CONFIG))")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  seen = {}
  for devices in (1, 2):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True,
                         capture_output=True, text=True).stdout.split()
    seen[int(out[-2])] = out[-1]
  assert seen == {1: "True", 2: "False"}


def test_the_loop_inside_scanned_rematerialized_layers(loop_everywhere):
  on, off = _models(scan_layers=True, remat_policy="minimal")
  p = params_lib.init_params(on, jax.random.PRNGKey(2))
  value_and_grad = jax.jit(jax.value_and_grad(_loss, argnums=1), static_argnums=0)
  rng = jax.random.PRNGKey(0)
  loss_on, grads_on = value_and_grad(on, p, rng)
  loss_off, grads_off = value_and_grad(off, p, rng)
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("bits", [8, 32])
def test_dropout_that_keeps_nothing_gives_zeros_and_finite_gradients(bits):
  # The loop divides by the keep probability it is handed: never by 0.
  drop = layers.Dropout(rate=1.0, mask_bits=bits)
  x = jnp.arange(1.0, 7.0).reshape(2, 3)
  apply = lambda x: drop.apply({}, x, deterministic=False,  # noqa: E731
                               rngs={"dropout": jax.random.PRNGKey(0)})
  np.testing.assert_array_equal(apply(x), np.zeros((2, 3)))
  grad = jax.grad(lambda x: apply(x).sum())(x)
  np.testing.assert_array_equal(grad, np.zeros((2, 3)))
