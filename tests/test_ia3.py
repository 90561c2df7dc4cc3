"""IA3 (Liu et al. 2022): rescaled keys, values and MLP activations; exact at
ones; the same as scaling the frozen weights; combined with a soft prompt."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import decoding
from prompt_tuning import trees as tree_lib
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import base as prompt_base
from prompt_tuning.prompts import ia3, per_layer, soft
from prompt_tuning.runtime import freezing
from prompt_tuning.train import step as step_lib

CFG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
               num_decoder_layers=3, head_dim=8, mlp_dim=32)
ENC = jnp.asarray([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]], jnp.int32)
TGT = jnp.asarray([[11, 12, 13, 1], [14, 1, 0, 0]], jnp.int32)


def _logits(model, params):
  return model.apply({"params": params}, ENC, decoding.shift_right(TGT), TGT)


def _ia3_model(cfg=CFG):
  model = T5(cfg, encoder_prompt=ia3.IA3(model_config=cfg))
  return model, params_lib.init_params(model, jax.random.PRNGKey(0))


def _backbone(params):
  return {k: v for k, v in params.items() if k != "encoder_prompt"}


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_untrained_ia3_is_exactly_the_plain_model(scan):
  cfg = CFG.replace(scan_layers=scan)
  model, params = _ia3_model(cfg)
  vectors = tree_lib.flatten(params["encoder_prompt"])
  assert sorted(vectors) == sorted(
      [f"{s}_self_attention_{p}" for s in ("encoder", "decoder") for p in ("key", "value")]
      + ["decoder_cross_attention_key", "decoder_cross_attention_value", "encoder_mlp",
         "decoder_mlp"])
  assert all(np.all(np.asarray(v) == 1.0) for v in vectors.values())
  plain = T5(cfg)
  np.testing.assert_array_equal(_logits(model, params), _logits(plain, _backbone(params)))
  got = decoding.generate(model, params, ENC, decoding.DecodingConfig(max_decode_length=5))
  ref = decoding.generate(plain, _backbone(params), ENC,
                          decoding.DecodingConfig(max_decode_length=5))
  np.testing.assert_array_equal(got[0], ref[0])
  np.testing.assert_array_equal(got[1], ref[1])


def _folded_backbone(params):
  """The backbone with IA3 folded into the frozen weights, by hand:
  (x W_k) * l_k = x (W_k diag(l_k)), likewise W_v; (l_ff * h) W_o = h (diag(l_ff) W_o)."""
  flat = {k: np.array(v) for k, v in tree_lib.flatten(_backbone(params)).items()}
  vec = {k: np.asarray(v) for k, v in tree_lib.flatten(params["encoder_prompt"]).items()}
  places = {("encoder", "self_attention"): "attention",
            ("decoder", "self_attention"): "self_attention",
            ("decoder", "cross_attention"): "encoder_decoder_attention"}
  for (stack, place), module in places.items():
    for part in ("key", "value"):
      for i, l in enumerate(vec[f"{stack}_{place}_{part}"]):
        flat[f"{stack}/layers_{i}/{module}/{part}/kernel"] *= l[None, :]
  for stack in ("encoder", "decoder"):
    for i, l in enumerate(vec[f"{stack}_mlp"]):
      flat[f"{stack}/layers_{i}/mlp/wo/kernel"] *= l[:, None]
  return tree_lib.unflatten(flat)


def test_ia3_equals_scaling_the_frozen_weights_by_hand():
  model, params = _ia3_model()
  rng = np.random.RandomState(0)
  params["encoder_prompt"] = jax.tree.map(
      lambda v: jnp.asarray(1.0 + 0.5 * rng.randn(*v.shape), jnp.float32),
      params["encoder_prompt"])
  ref_params = _folded_backbone(params)
  got = _logits(model, params)
  np.testing.assert_allclose(got, _logits(T5(CFG), ref_params), rtol=1e-4, atol=1e-4)
  assert not np.allclose(got, _logits(T5(CFG), _backbone(params)), atol=1e-3)
  # Scanned layers and cached decoding see the same vectors.
  stacked = tree_lib.unflatten(params_lib.stack_layers(
      tree_lib.flatten(params), {"encoder": 2, "decoder": 3}))
  scanned = T5(CFG.replace(scan_layers=True),
               encoder_prompt=ia3.IA3(model_config=CFG.replace(scan_layers=True)))
  np.testing.assert_allclose(_logits(scanned, stacked), got, rtol=1e-5, atol=1e-5)
  tokens, logp = decoding.generate(model, params, ENC, decoding.DecodingConfig(
      max_decode_length=5))
  ref_tokens, ref_logp = decoding.generate(T5(CFG), ref_params, ENC, decoding.DecodingConfig(
      max_decode_length=5))
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-4, atol=1e-4)


def _combined(cfg=CFG):
  prompt = per_layer.CombinedPrompt(prompt=soft.SoftPrompt(length=3), per_layer=(ia3.IA3(),))
  # As the model spec builds it: the config reaches the parts.
  model = T5(cfg, encoder_prompt=prompt_base.for_model(prompt, cfg))
  return model, params_lib.init_params(model, jax.random.PRNGKey(0))


def test_combines_with_a_soft_prompt_and_trains_with_the_backbone_frozen():
  model, params = _combined()
  inner = params["encoder_prompt"]
  assert sorted(inner) == ["per_layer_0", "prompt"]
  # At ones, the combination is exactly the soft prompt alone.
  alone = T5(CFG, encoder_prompt=soft.SoftPrompt(length=3))
  alone_params = {**_backbone(params), "encoder_prompt": inner["prompt"]}
  np.testing.assert_array_equal(_logits(model, params), _logits(alone, alone_params))

  def trained(rules):
    mask = freezing.trainable_mask(params, rules)
    trainable, frozen = freezing.split(params, mask)
    opt = optax.adam(0.1)
    step = jax.jit(step_lib.make_train_step(model, opt))
    batch = {"encoder_input_tokens": ENC, "decoder_input_tokens": decoding.shift_right(TGT),
             "decoder_target_tokens": TGT}
    new, _, _ = step(trainable, opt.init(trainable), frozen, batch, jax.random.PRNGKey(0))
    changed = {k for k, v in tree_lib.flatten(new).items()
               if not np.array_equal(v, tree_lib.flatten(trainable)[k])}
    return set(tree_lib.flatten(trainable)), changed

  trainable, changed = trained(freezing.PROMPT_TUNING_RULES)
  assert trainable == changed == {k for k in tree_lib.flatten(params)
                                  if k.startswith("encoder_prompt/")}
  # IA3_RULES: the IA3 vectors train, the soft prompt and the backbone stay.
  trainable, changed = trained(freezing.IA3_RULES)
  assert trainable == changed == {f"encoder_prompt/per_layer_0/{k}"
                                  for k in tree_lib.flatten(inner["per_layer_0"])}


def test_ia3_vectors_of_another_model_size_fail_with_one_line():
  _, params = _ia3_model()
  for changes, name, want in [
      (dict(num_heads=3), "encoder_self_attention_key", r"\(2, 24\)"),
      (dict(num_encoder_layers=3), "encoder_self_attention_key", r"\(3, 16\)"),
      (dict(mlp_dim=48), "encoder_mlp", r"\(2, 48\)")]:
    cfg = CFG.replace(**changes)
    other = params_lib.init_params(T5(cfg), jax.random.PRNGKey(0))
    other["encoder_prompt"] = params["encoder_prompt"]
    model = T5(cfg, encoder_prompt=ia3.IA3(model_config=cfg))
    with pytest.raises(ValueError, match=f"IA3 parameter '{name}' has shape .*, but this model "
                                         f"needs {want}.*another model size") as err:
      _logits(model, other)
    assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match="CombinedPrompt.per_layer holds SoftPrompt"):
    params_lib.init_params(T5(CFG, encoder_prompt=per_layer.CombinedPrompt(
        per_layer=(soft.SoftPrompt(length=2),))), jax.random.PRNGKey(0))
