"""bfloat16 activations for every prompt method (issue 37): the backbone computes in
bfloat16 while the prompt parameters and their optimizer state stay float32, as
T5X does; training a step and inferring (greedy, beam, rank scoring) both work."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding
from prompt_tuning.cli import gin as gin_lib
from prompt_tuning.models import layers
from prompt_tuning.runtime import freezing
from prompt_tuning.runtime import setup as setup_lib
from prompt_tuning.train import optimizers
from prompt_tuning.train import step as step_lib
from tests.test_attempt import write_sources
from tests.conftest import fixture_path
from tests.test_binaries import FIXTURE_MODEL_GIN
from tests.test_prompt_methods import METHOD_GINS

METHODS = {"soft_prompt": ["include 'prompts/soft_prompt.gin'", "PROMPT_LENGTH = 3"],
           **METHOD_GINS}
B, L, T = 4, 8, 4


def _setup(method, dtype, tmp_path):
  """The method's gin (as the binaries read it) on the frozen T5X fixture -> the
  built model and parameters."""
  sources = write_sources(tmp_path, 2, p=3, h=4)
  body = "\n".join([FIXTURE_MODEL_GIN] + METHODS[method]) % {"sources": sources}
  lines = [body, f"T5Config.dtype = '{dtype}'", "ModelSpec.config = %MODEL_CONFIG",
           "ModelSpec.encoder_prompt = %ENCODER_PROMPT",
           f"ModelSpec.checkpoint = '{fixture_path('t5x_tiny_checkpoint')}'"]
  gin.clear_config()
  try:
    gin_lib.parse_gin([], ["\n".join(lines)])
    spec = gin_lib.run_configured("ModelSpec")
  finally:
    gin.clear_config()
  assert spec.config.dtype == dtype
  return setup_lib.build(spec, seed=0)


def _batch():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 100, size=(B, L)).astype(np.int32)
  enc[:, -1] = 1
  tgt = rng.randint(2, 100, size=(B, T)).astype(np.int32)
  tgt[:, -1] = 1
  dec_in = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], axis=1)
  return dict(encoder_input_tokens=enc, decoder_input_tokens=dec_in, decoder_target_tokens=tgt,
              decoder_loss_weights=np.ones((B, T), np.float32),
              task_index=np.arange(B, dtype=np.int32) % 3)


def _floating_dtypes(tree):
  return {jnp.dtype(x.dtype).name for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_infers_in_bfloat16_with_float32_state(method, tmp_path):
  setup = _setup(method, "bfloat16", tmp_path)
  model, batch = setup.model, _batch()
  assert _floating_dtypes(setup.trainable) == {"float32"}
  opt = optimizers.prompt_tuning_adafactor()
  opt_state = opt.init(setup.trainable)
  step = jax.jit(step_lib.make_train_step(model, opt))
  # The activations really are bfloat16: the encoder's output is (the logits are
  # cast to float32 at the end, as T5X does).
  merged = freezing.merge(setup.trainable, setup.frozen)
  encoded, _ = jax.eval_shape(
      lambda p: model.apply({"params": p}, batch["encoder_input_tokens"],
                            prompt_features=step_lib.prompt_features(batch),
                            method=model.encode), merged)
  assert encoded.dtype == jnp.bfloat16
  trainable, new_state, metrics = step(setup.trainable, opt_state, setup.frozen, batch,
                                       jax.random.PRNGKey(0))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["finite"]) == 1
  # The prompt and the optimizer state stay float32, and the step moved the prompt.
  assert _floating_dtypes(trainable) == {"float32"}
  assert _floating_dtypes(new_state) <= {"float32"}
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), trainable,
                                       setup.trainable))
  assert any(moved)
  # Inference with the trained prompt: greedy decoding and rank scoring (beam search
  # shares greedy's cached decoder; tests/test_decoding.py covers it).
  params = freezing.merge(trainable, setup.frozen)
  features = step_lib.prompt_features(batch)
  enc = jnp.asarray(batch["encoder_input_tokens"])
  cfg = decoding.DecodingConfig(method="greedy", max_decode_length=3)
  tokens, scores = jax.jit(lambda p, x: decoding.generate(
      model, p, x, cfg, prompt_features=features))(params, enc)
  assert tokens.shape == (B, 3) and np.all(np.isfinite(np.asarray(scores, np.float32)))
  cands = jnp.asarray([[5, 6, 1], [7, 1, 0]], jnp.int32)
  ranked = jax.jit(lambda p, x: decoding.score_candidates(
      model, p, x, cands, prompt_features=features))(params, enc)
  assert ranked.shape == (B, 2) and np.all(np.isfinite(np.asarray(ranked, np.float32)))


def test_bfloat16_loss_is_float32_loss_to_bfloat16_precision(tmp_path):
  """The same parameters, float32 and bfloat16 activations: the same loss to a few
  parts in a hundred (bfloat16 keeps 8 bits of mantissa)."""
  batch = _batch()
  setups = [_setup("soft_prompt", d, tmp_path) for d in ("bfloat16", "float32")]
  for a, b in zip(jax.tree.leaves(setups[0].trainable), jax.tree.leaves(setups[1].trainable)):
    np.testing.assert_array_equal(a, b)
  losses = [jax.jit(lambda t, f, s=s: step_lib.loss_fn(t, f, s.model, batch, None, 1e-4)[0])(
      s.trainable, s.frozen) for s in setups]
  assert float(losses[0]) != float(losses[1])  # the bfloat16 model did compute in bfloat16
  np.testing.assert_allclose(float(losses[0]), float(losses[1]), rtol=3e-2)


# --- the products: bfloat16 operands, float32 sums ------------------------------

# The weight products (as Dense and Embed.attend write them), one with a single row
# (a decoding step of batch 1), and a batched one.
_PRODUCTS = [("mi,io->mo", (6, 5), (5, 3)), ("mh,vh->mv", (1, 16), (32, 16)),
             ("blnd,bknd->bnlk", (2, 3, 2, 4), (2, 5, 2, 4))]


def _dot_generals(jaxpr):
  """Every dot_general equation of `jaxpr`, sub-jaxprs (custom_vjp bodies) included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn)
    for sub in jax.core.jaxprs_in_params(eqn.params):
      found += _dot_generals(sub)
  return found


@pytest.mark.parametrize("subscripts, a_shape, b_shape", _PRODUCTS)
def test_bfloat16_products_sum_in_float32_forward_and_backward(subscripts, a_shape, b_shape):
  rng = np.random.RandomState(0)
  a = jnp.asarray(rng.randn(*a_shape), jnp.bfloat16)
  b = jnp.asarray(rng.randn(*b_shape), jnp.float32)  # a float32 kernel, say
  w = jnp.asarray(rng.randn(*jnp.einsum(subscripts, a, b).shape), jnp.float32)

  def loss(a, b, dtype):
    out = layers.einsum(subscripts, a, b, dtype)
    return jnp.sum(out.astype(jnp.float32) * w), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      a, b, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  # Gradients in each operand's own dtype.
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32
  # Against float32 arithmetic on the same (bfloat16-rounded) operands.
  b16 = b.astype(jnp.bfloat16).astype(jnp.float32)
  (_, ref_out), ref_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      a.astype(jnp.float32), b16, jnp.float32)
  np.testing.assert_allclose(np.float32(out), ref_out, rtol=1e-2, atol=1e-2)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.float32(g), r, rtol=2e-2, atol=2e-2)
  # Every product of the step, forward and both backward ones, takes bfloat16 operands
  # and sums in float32: the form XLA:CPU runs on AMX tiles.
  jaxpr = jax.make_jaxpr(jax.grad(lambda a, b: loss(a, b, jnp.bfloat16)[0], argnums=(0, 1)))(
      a, b).jaxpr
  dots = _dot_generals(jaxpr)
  assert len(dots) >= 3
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16], eqn
    assert eqn.params["preferred_element_type"] == jnp.float32, eqn
  # float32 activations: exactly jnp.einsum.
  a32 = a.astype(jnp.float32)
  np.testing.assert_array_equal(layers.einsum(subscripts, a32, b, jnp.float32),
                                jnp.einsum(subscripts, a32, b))


def test_a_product_whose_gradient_is_not_a_product_is_refused():
  x = jnp.ones((2, 3), jnp.bfloat16)
  with pytest.raises(ValueError, match="each appear in the other operand or the output"):
    layers.einsum("ij,jk->k", x, jnp.ones((3, 4)), jnp.bfloat16)


def test_the_weight_products_of_the_model_sum_in_float32_in_bfloat16():
  x = jnp.ones((2, 3, 16), jnp.bfloat16)
  dense = layers.Dense(8, ("embed", "mlp"), dtype=jnp.bfloat16)
  embed = layers.Embed(32, 16, dtype=jnp.bfloat16)
  for module, method in ((dense, None), (embed, "attend")):
    variables = module.init(jax.random.PRNGKey(0), x, method=method)
    out = module.apply(variables, x, method=method)
    assert out.dtype == jnp.bfloat16 and out.shape[:2] == (2, 3)
    loss = lambda v, x: jnp.sum(module.apply(v, x, method=method).astype(jnp.float32))  # noqa: E731
    dots = _dot_generals(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(variables, x).jaxpr)
    assert len(dots) == 3  # forward, and the gradients of the input and the weights
    assert all(e.params["preferred_element_type"] == jnp.float32 for e in dots)
