"""Deep prompts / prefix tuning: per-layer key/value prefixes in the three
attention kinds, scanned or unrolled, cached decoding, and the reparameterization
folded into plain prefixes at export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding
from prompt_tuning import trees as tree_lib
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import deep
from prompt_tuning.runtime import checkpoints as checkpoints_lib

CFG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
               num_decoder_layers=3, head_dim=8, mlp_dim=32)
ENC = jnp.asarray([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]], jnp.int32)
TGT = jnp.asarray([[11, 12, 13, 1], [14, 1, 0, 0]], jnp.int32)
KINDS = ("encoder_self", "decoder_self", "cross")


def _model(cfg=CFG, **kwargs):
  kwargs.setdefault("length", 3)
  kwargs.setdefault("init_stddev", 1.0)  # prefixes that change the outputs visibly
  prompt = deep.DeepPrompt(model_config=cfg, **kwargs)
  model = T5(cfg, encoder_prompt=prompt)
  return model, params_lib.init_params(model, jax.random.PRNGKey(0))


def _logits(model, params):
  return model.apply({"params": params}, ENC, decoding.shift_right(TGT), TGT)


def _encoded(model, params):
  return model.apply({"params": params}, ENC, method=model.encode)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_each_attention_kind_is_selectable_and_every_layer_gets_its_prefix(kind):
  model, params = _model(attentions=(kind,))
  prompt = params["encoder_prompt"]
  assert sorted(prompt) == [f"{kind}_key", f"{kind}_value"]
  layers = CFG.num_encoder_layers if kind == "encoder_self" else CFG.num_decoder_layers
  assert prompt[f"{kind}_key"].shape == (layers, 3, CFG.num_heads, CFG.head_dim)
  base_logits, base_encoded = _logits(model, params), _encoded(model, params)
  for layer in range(layers):
    for part in ("key", "value"):
      name = f"{kind}_{part}"
      bumped = jax.tree.map(lambda x: x, params)
      bumped["encoder_prompt"] = dict(prompt)
      bumped["encoder_prompt"][name] = prompt[name].at[layer].add(1.0)
      assert not np.allclose(_logits(model, bumped), base_logits, atol=1e-5), (name, layer)
      # Only an encoder prefix changes the encoder output.
      same = np.allclose(_encoded(model, bumped), base_encoded)
      assert same == (kind != "encoder_self"), (name, layer)


def test_decoder_self_prefix_is_visible_to_the_first_position():
  """The first decoder position sees only itself and the prefix: with a prefix
  its output differs, which a prefix hidden behind the causal mask would not."""
  model, params = _model(attentions=("decoder_self",))
  plain = T5(CFG)
  backbone = {k: v for k, v in params.items() if k != "encoder_prompt"}
  got = _logits(model, params)[:, 0]
  ref = _logits(plain, backbone)[:, 0]
  assert not np.allclose(got, ref, atol=1e-4)


def _stacked(params, cfg):
  flat = params_lib.stack_layers(tree_lib.flatten(params),
                                 {"encoder": cfg.num_encoder_layers,
                                  "decoder": cfg.num_decoder_layers})
  return tree_lib.unflatten(flat)


@pytest.mark.parametrize("reparameterize", [False, True])
def test_scanned_layers_equal_unrolled(reparameterize):
  model, params = _model(reparameterize=reparameterize, reparam_hidden=8)
  scanned_cfg = CFG.replace(scan_layers=True)
  scanned, _ = _model(scanned_cfg, reparameterize=reparameterize, reparam_hidden=8)
  got = jax.jit(lambda p: _logits(scanned, p))(_stacked(params, CFG))
  np.testing.assert_allclose(got, _logits(model, params), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_cached_decoding_equals_uncached_and_teacher_forced_scoring(scan):
  cfg = CFG.replace(scan_layers=scan)
  model, params = _model(cfg, reparameterize=scan, reparam_hidden=8)
  cached = decoding.DecodingConfig(max_decode_length=6)
  tokens, logp = decoding.generate(model, params, ENC, cached)
  ref_tokens, ref_logp = decoding.generate(model, params, ENC,
                                           decoding.DecodingConfig(max_decode_length=6,
                                                                   use_cache=False))
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)
  # A teacher-forced pass over the decoded tokens gives the same log-probability:
  # every cached step saw the prefixes the full pass sees.
  np.testing.assert_allclose(decoding.score(model, params, ENC, tokens), logp,
                             rtol=1e-5, atol=1e-4)
  # Scoring candidates (one cached pass) agrees with scoring each in turn.
  candidates = jnp.asarray([[11, 12, 1], [13, 1, 0]], jnp.int32)
  by_cache = decoding.score_candidates(model, params, ENC, candidates)
  for c in range(2):
    each = decoding.score(model, params, ENC, jnp.broadcast_to(candidates[c], (2, 3)))
    np.testing.assert_allclose(by_cache[:, c], each, rtol=1e-5, atol=1e-4)
  # The prefixes matter for what is decoded (else the test above proves nothing).
  backbone = {k: v for k, v in params.items() if k != "encoder_prompt"}
  _, plain_logp = decoding.generate(T5(cfg), backbone, ENC, cached)
  assert not np.allclose(plain_logp, logp, atol=1e-3)
  if scan:
    return  # beam search's cache reordering is layout-independent; once is enough
  beams, _ = decoding.generate(model, params, ENC, decoding.DecodingConfig(
      method="beam", num_beams=3, max_decode_length=6))
  ref_beams, _ = decoding.generate(model, params, ENC, decoding.DecodingConfig(
      method="beam", num_beams=3, max_decode_length=6, use_cache=False))
  np.testing.assert_array_equal(beams, ref_beams)


def test_reparameterized_prefixes_fold_into_the_exported_plain_prefixes(tmp_path):
  model, params = _model(reparameterize=True, reparam_dim=5, reparam_hidden=8)
  flat = tree_lib.flatten(params)
  assert flat["encoder_prompt/cross_reparam_input"].shape == (3, 5)
  written = checkpoints_lib.export_prompts(str(tmp_path), 7, {"encoder_prompt":
                                                               params["encoder_prompt"]})
  names = sorted(p.rsplit("/", 1)[-1] for p in written)
  assert names == sorted(f"encoder_prompt.{k}_{part}.npy" for k in KINDS
                         for part in ("key", "value"))
  # By hand: tanh(P' W1 + b1) W2 + b2, per layer and part.
  p = params["encoder_prompt"]
  h = np.tanh(np.asarray(p["cross_reparam_input"]) @ np.asarray(p["cross_reparam_hidden"])
              + np.asarray(p["cross_reparam_hidden_bias"])[None])
  want = (np.einsum("pr,rlnd->lpnd", h, np.asarray(p["cross_reparam_out_value"]))
          + np.asarray(p["cross_reparam_out_value_bias"])[:, None])
  got = np.load(tmp_path / "prompts" / "step_7" / "encoder_prompt.cross_value.npy")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # A plain DeepPrompt started from the exported folder is the same model.
  plain, plain_params = _model(init_dir=str(tmp_path / "prompts" / "step_7"))
  np.testing.assert_allclose(_logits(plain, plain_params), _logits(model, params),
                             rtol=1e-5, atol=1e-5)
  folded = deep.fold_reparameterized(tree_lib.flatten({"encoder_prompt": p}))
  np.testing.assert_allclose(folded["encoder_prompt/cross_value"], want, rtol=1e-5, atol=1e-6)


def test_bad_inputs_give_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="DeepPrompt.attentions"):
    _model(attentions=("decoder_cross",))
  with pytest.raises(ValueError, match="DeepPrompt.attentions"):
    _model(attentions=())
  # A tree trained for another model size.
  _, params = _model()
  deeper = CFG.replace(num_decoder_layers=4)
  model = T5(deeper, encoder_prompt=deep.DeepPrompt(length=3, model_config=deeper))
  other = params_lib.init_params(T5(deeper), jax.random.PRNGKey(0))
  other["encoder_prompt"] = params["encoder_prompt"]
  with pytest.raises(ValueError, match=r"decoder_self_key.*\(3, 3, 2, 8\).*\(4, 3, 2, 8\).*"
                                       "another model size"):
    _logits(model, other)
  with pytest.raises(ValueError, match="plug it in as the encoder prompt"):
    params_lib.init_params(T5(CFG, decoder_prompt=deep.DeepPrompt(model_config=CFG)),
                           jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"expected one file \*.encoder_self_key.npy, found 0"):
    _model(init_dir=str(tmp_path))
  with pytest.raises(ValueError, match="needs the backbone's T5Config"):
    params_lib.init_params(T5(CFG, encoder_prompt=deep.DeepPrompt()), jax.random.PRNGKey(0))
