"""HyperPrompt-Global (He et al. 2022): the paper's equations by hand, the deep
prompt mechanism reused, scanned layers, cached decoding and the gin switch."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding
from prompt_tuning import trees as tree_lib
from prompt_tuning.cli import gin as gin_lib
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import deep, hyper
from prompt_tuning.runtime import freezing

CFG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
               num_decoder_layers=3, head_dim=6, mlp_dim=32)
ENC = jnp.asarray([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0], [11, 12, 13, 1, 0]], jnp.int32)
TGT = jnp.asarray([[11, 12, 13, 1], [14, 1, 0, 0], [15, 16, 1, 0]], jnp.int32)
TASKS = jnp.asarray([2, 0, 1], jnp.int32)


def _module(cfg=CFG, **kwargs):
  return hyper.HyperPrompt(num_tasks=3, length=4, bottleneck=5, task_dim=6, embedding_dim=7,
                           hidden_dim=9, model_config=cfg, **kwargs)


def _model(cfg=CFG, **kwargs):
  model = T5(cfg, encoder_prompt=_module(cfg, **kwargs))
  return model, params_lib.init_params(model, jax.random.PRNGKey(0))


def _conditioning(model, params, tasks=TASKS):
  prompt = model.encoder_prompt
  return prompt.apply({"params": params["encoder_prompt"]}, len(tasks),
                      task_index=tasks, method=prompt.layer_conditioning)


def _logits(model, params, tasks=TASKS, enc=ENC, tgt=TGT):
  return model.apply({"params": params}, enc, decoding.shift_right(tgt), tgt,
                     prompt_features={"task_index": tasks})


def test_hyper_prompts_follow_the_papers_equations():
  model, params = _model()
  p = jax.tree.map(np.asarray, params["encoder_prompt"])
  assert p["encoder_global_prompts"].shape == (2, 4, 16)
  assert p["decoder_global_prompts"].shape == (3, 4, 16)
  assert p["key_down_generator"].shape == (7, 16, 5)   # W^{D^K}: I -> D [H, b]
  assert p["value_up_generator"].shape == (7, 5, 12)   # W^{U^V}: I -> U [b, N*D]
  got = _conditioning(model, params)
  relu = lambda x: np.maximum(x, 0)  # noqa: E731
  for stack in ("encoder", "decoder"):
    keys, values = got[stack]["self_attention"]["prefix"]
    assert set(got[stack]) == {"self_attention"}  # self-attention only, as in the paper
    for m in range(p[f"{stack}_layer_embedding"].shape[0]):
      for row, task in enumerate(np.asarray(TASKS)):
        # I = h_t([k_tau; z_m]), a two-layer ReLU MLP.
        z = np.concatenate([p["task_embedding"][task], p[f"{stack}_layer_embedding"][m]])
        i = (relu(z @ p["task_mlp_in"] + p["task_mlp_in_bias"]) @ p["task_mlp_out"]
             + p["task_mlp_out_bias"])
        for part, got_part in (("key", keys), ("value", values)):
          down = np.tensordot(i, p[f"{part}_down_generator"], axes=1)   # D = W^D I  [H, b]
          up = np.tensordot(i, p[f"{part}_up_generator"], axes=1)       # U = W^U I  [b, N*D]
          want = relu(p[f"{stack}_global_prompts"][m] @ down) @ up      # ReLU(P_m D) U
          np.testing.assert_allclose(got_part[m, row].reshape(4, 12), want, rtol=2e-4,
                                     atol=2e-5, err_msg=f"{stack} layer {m} task {task} {part}")
  # Tasks and layers get their own prompts.
  keys = got["encoder"]["self_attention"]["prefix"][0]
  assert not np.allclose(keys[0, 0], keys[0, 1]) and not np.allclose(keys[0, 0], keys[1, 0])


def test_prefixes_take_the_deep_prompt_path():
  """HyperPrompt's hyper-prompts for one task, stored as a DeepPrompt's plain
  prefixes, give the same model: one per-layer mechanism, not two."""
  model, params = _model()
  task = jnp.asarray([1], jnp.int32)
  cond = _conditioning(model, params, task)
  as_deep = T5(CFG, encoder_prompt=deep.DeepPrompt(
      length=4, attentions=("encoder_self", "decoder_self"), model_config=CFG))
  deep_params = {k: v for k, v in params.items() if k != "encoder_prompt"}
  deep_params["encoder_prompt"] = {
      f"{stack}_self_{part}": cond[stack]["self_attention"]["prefix"][i][:, 0]
      for stack in ("encoder", "decoder") for i, part in enumerate(("key", "value"))}
  got = _logits(model, params, task, ENC[:1], TGT[:1])
  np.testing.assert_allclose(got, as_deep.apply({"params": deep_params}, ENC[:1],
                                                decoding.shift_right(TGT[:1]), TGT[:1]),
                             rtol=1e-5, atol=1e-5)
  backbone = {k: v for k, v in params.items() if k != "encoder_prompt"}
  plain = T5(CFG).apply({"params": backbone}, ENC[:1], decoding.shift_right(TGT[:1]), TGT[:1])
  assert not np.allclose(got, plain, atol=1e-3)  # the hyper-prompts do something


def test_scanned_layers_and_cached_decoding():
  model, params = _model()
  scanned_cfg = CFG.replace(scan_layers=True)
  scanned, _ = _model(scanned_cfg)
  stacked = tree_lib.unflatten(params_lib.stack_layers(tree_lib.flatten(params),
                                                       {"encoder": 2, "decoder": 3}))
  np.testing.assert_allclose(_logits(scanned, stacked), _logits(model, params),
                             rtol=1e-5, atol=1e-5)
  feats = {"task_index": TASKS}
  for m, p in ((model, params), (scanned, stacked)):
    tokens, logp = decoding.generate(m, p, ENC, decoding.DecodingConfig(max_decode_length=5),
                                     prompt_features=feats)
    ref, ref_logp = decoding.generate(m, p, ENC, decoding.DecodingConfig(
        max_decode_length=5, use_cache=False), prompt_features=feats)
    np.testing.assert_array_equal(tokens, ref)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decoding.score(m, p, ENC, tokens, prompt_features=feats), logp,
                               rtol=1e-5, atol=1e-4)


def test_bad_settings_and_the_gin_switch():
  with pytest.raises(ValueError, match=r"HyperPrompt.stacks=\('cross',\)"):
    _model(stacks=("cross",))
  encoder_only, params = _model(stacks=("encoder",))
  assert not any(k.startswith("decoder_") for k in params["encoder_prompt"])
  assert set(_conditioning(encoder_only, params)) == {"encoder"}
  for switch, want in (("False", freezing.PROMPT_TUNING_RULES),
                       ("True", freezing.FULL_FINETUNING_RULES)):
    gin.clear_config()
    try:
      gin_lib.parse_gin(["prompts/hyperprompt.gin"],
                        ["NUM_TASKS = 2", f"TRAIN_BACKBONE = {switch}"])
      assert tuple(gin.query_parameter("ModelSpec.trainable_rules").scoped_configurable_fn()) \
          == tuple(want)
    finally:
      gin.clear_config()
