"""Prompt attention masks, checked against an encoder written out in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import masks, multi_task, soft

CFG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=1,
               num_decoder_layers=1, head_dim=8, mlp_dim=32)
ENC = jnp.asarray([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]], jnp.int32)
TGT = jnp.asarray([[11, 12, 1], [14, 1, 0]], jnp.int32)
P = 3


def _model(**rules):
  model = T5(CFG, encoder_prompt=masks.MaskedPrompt(prompt=soft.SoftPrompt(length=P), **rules))
  params = params_lib.init_params(model, jax.random.PRNGKey(0))
  # No position bias: the hand computation below then needs no bucket table.
  params["encoder"]["relpos_bias"]["rel_embedding"] = jnp.zeros_like(
      params["encoder"]["relpos_bias"]["rel_embedding"])
  return model, params


def _rms(x, scale):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * scale


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _numpy_encoder(params, tokens, visible):
  """One T5 1.1 encoder layer on [prompt; embedded tokens], attention masked by
  `visible` [B, M, M], written from the T5 equations without the library."""
  p = jax.tree.map(np.asarray, params)
  layer = p["encoder"]["layers_0"]
  emb = p["token_embedder"]["embedding"][np.asarray(tokens)]
  prompt = np.broadcast_to(p["encoder_prompt"]["prompt"]["prompt"], (len(tokens), P, 16))
  x = np.concatenate([prompt, emb], axis=1)
  b, m, _ = x.shape
  h = _rms(x, layer["pre_attention_layer_norm"]["scale"])
  att = layer["attention"]
  q, k, v = (np.einsum("bmh,hk->bmk", h, att[n]["kernel"]).reshape(b, m, 2, 8)
             for n in ("query", "key", "value"))
  logits = np.einsum("bqnd,bknd->bnqk", q, k) + np.where(visible, 0.0, -1e10)[:, None]
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  out = np.einsum("bnqk,bknd->bqnd", w, v).reshape(b, m, 16) @ att["out"]["kernel"]
  x = x + out
  h = _rms(x, layer["pre_mlp_layer_norm"]["scale"])
  mlp = layer["mlp"]
  x = x + (_gelu(h @ mlp["wi_0"]["kernel"]) * (h @ mlp["wi_1"]["kernel"])) @ mlp["wo"]["kernel"]
  return _rms(x, p["encoder"]["encoder_norm"]["scale"])


@pytest.mark.parametrize("rules", [
    {},
    dict(inputs_see_prompt=False),
    dict(prompt_sees_inputs=False),
    dict(prompt_sees_prompt=False),
    dict(inputs_see_prompt=False, prompt_sees_inputs=False),
])
def test_encoder_equals_a_hand_computed_masked_attention(rules):
  model, params = _model(**rules)
  got, mask = model.apply({"params": params}, ENC, method=model.encode)
  # The visibility, written out for positions 0..P-1 (prompt) then the tokens.
  valid = np.concatenate([np.ones((2, P), bool), np.asarray(ENC) > 0], axis=1)
  is_prompt = np.arange(P + ENC.shape[1]) < P
  see = {(True, True): rules.get("prompt_sees_prompt", True),
         (True, False): rules.get("prompt_sees_inputs", True),
         (False, True): rules.get("inputs_see_prompt", True), (False, False): True}
  rule = np.array([[see[(bool(qp), bool(kp))] for kp in is_prompt] for qp in is_prompt])
  visible = rule[None] & valid[:, :, None] & valid[:, None, :]
  want = _numpy_encoder(params, ENC, visible)
  np.testing.assert_array_equal(mask, valid)
  np.testing.assert_allclose(np.where(valid[..., None], got, 0),
                             np.where(valid[..., None], want, 0), rtol=2e-4, atol=2e-4)


def test_what_the_masks_cut_off_does_not_matter():
  """Inputs blind to the prompt and a decoder blind to it: the prompt cannot
  change the output. A prompt blind to the inputs: its encodings do not
  depend on them."""
  model, params = _model(inputs_see_prompt=False, decoder_sees_prompt=False)
  _, mask = model.apply({"params": params}, ENC, method=model.encode)
  np.testing.assert_array_equal(mask[:, :P], False)
  other = jax.tree.map(lambda x: x, params)
  other["encoder_prompt"] = {"prompt": {"prompt": params["encoder_prompt"]["prompt"]["prompt"]
                                        + 3.0}}
  real = np.asarray(TGT > 0)[..., None]  # padded targets see everything (no key is valid)
  logits = model.apply({"params": params}, ENC, decoding.shift_right(TGT), TGT)
  other_logits = model.apply({"params": other}, ENC, decoding.shift_right(TGT), TGT)
  np.testing.assert_array_equal(np.where(real, logits, 0), np.where(real, other_logits, 0))
  model, params = _model(prompt_sees_inputs=False)
  a = model.apply({"params": params}, ENC, method=model.encode)[0][:, :P]
  b = model.apply({"params": params}, ENC[::-1], method=model.encode)[0][:, :P]
  np.testing.assert_allclose(a[0], a[1], rtol=1e-6, atol=1e-6)  # same for both inputs
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6)


def test_masks_follow_the_combine_mode_and_bad_settings_fail():
  mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  np.testing.assert_array_equal(masks.prompt_positions(2, mask, "after_first"),
                                [[0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(masks.prompt_positions(2, mask, "suffix"),
                                [[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]])
  with pytest.raises(ValueError, match="would attend to nothing"):
    _model(prompt_sees_prompt=False, prompt_sees_inputs=False)
  bank = masks.MaskedPrompt(prompt=multi_task.PromptBank(num_prompts=2, length=2),
                            inputs_see_prompt=False)
  params_lib.init_params(T5(CFG, encoder_prompt=bank), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="only the encoder seam"):
    params_lib.init_params(T5(CFG, decoder_prompt=masks.MaskedPrompt(
        prompt=soft.SoftPrompt(length=2))), jax.random.PRNGKey(0))
