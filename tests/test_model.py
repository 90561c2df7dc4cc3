"""The T5 network: names, logical axes, the prompt seam, dtypes, scan and remat."""

import glob
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.cli import gin as gin_utils
from prompt_tuning.models import params as params_lib
from prompt_tuning.models import presets
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning import trees as tree_lib
from tests.conftest import TINY_CONFIG, TINY_T5X_CONFIG, fixture_path

ENC = jnp.array([[5, 6, 7, 8, 9, 1], [10, 11, 1, 0, 0, 0]])
DEC_IN = jnp.array([[0, 12, 13, 14], [0, 15, 0, 0]])
DEC_TGT = jnp.array([[12, 13, 14, 1], [15, 1, 0, 0]])


def _params(config=TINY_CONFIG, seed=0, model=None):
  return params_lib.init_params(model or T5(config), jax.random.PRNGKey(seed))


class TokenPrefix(nn.Module):
  """Test seam: prepends the embeddings of fixed tokens (a 'hard' prompt)."""
  tokens: tuple
  embedder_params_path: str = "token_embedder"

  @nn.compact
  def __call__(self, embedded, tokens, mask, deterministic=True):
    table = self.param("table", nn.initializers.normal(1.0), (len(self.tokens), embedded.shape[-1]))
    prefix = jnp.broadcast_to(table[None], (embedded.shape[0],) + table.shape)
    prefix_mask = jnp.ones((embedded.shape[0], len(self.tokens)), bool)
    return (jnp.concatenate([prefix, embedded], axis=1),
            jnp.concatenate([prefix_mask, mask], axis=1))


class Identity(nn.Module):
  @nn.compact
  def __call__(self, embedded, tokens, mask, deterministic=True):
    return embedded, mask


class DropLast(nn.Module):
  """Masks the last real position of every row (as if it were padding)."""
  @nn.compact
  def __call__(self, embedded, tokens, mask, deterministic=True):
    last = jnp.sum(mask, axis=1, keepdims=True) - 1
    keep = jnp.arange(mask.shape[1])[None, :] != last
    return embedded, mask & keep


def _with_table_from_embeddings(params, prefix_tokens, seam_name):
  """Sets the seam's table to the embeddings of `prefix_tokens`."""
  params = jax.tree.map(lambda x: x, params)
  emb = params["token_embedder"]["embedding"]
  params[seam_name]["table"] = emb[jnp.array(prefix_tokens)]
  return params


def test_parameter_names_follow_t5x_exactly():
  from prompt_tuning.readers import t5x
  names = set(tree_lib.flatten(_params(TINY_T5X_CONFIG)))
  assert names == set(t5x.T5XCheckpoint(fixture_path("t5x_tiny_checkpoint")).names())


def test_t5_1_0_names_and_tied_logits():
  cfg = TINY_CONFIG.replace(mlp_activations=("relu",), logits_via_embedding=True)
  p = _params(cfg)
  names = set(tree_lib.flatten(p))
  assert "encoder/layers_0/mlp/wi/kernel" in names
  assert not any("logits_dense" in n for n in names)
  # Logits are the final decoder state against the embedding, times H^-0.5.
  model = T5(cfg)
  encoded, mask = model.apply({"params": p}, ENC, method=T5.encode)
  logits = model.apply({"params": p}, encoded, mask, DEC_IN, DEC_TGT, method=T5.decode)
  p_zero_emb = jax.tree.map(lambda x: x, p)
  p_zero_emb["token_embedder"]["embedding"] = p["token_embedder"]["embedding"] * 2.0
  # Doubling the table doubles every logit's dependence through the head; a
  # direct check: logits == y @ E.T * H^-0.5 with y taken from the model.
  _, state = model.apply({"params": p}, encoded, mask, DEC_IN, DEC_TGT, method=T5.decode,
                         capture_intermediates=lambda mdl, _: mdl.name == "decoder_norm")
  y = state["intermediates"]["decoder"]["decoder_norm"]["__call__"][0]
  want = jnp.einsum("bth,vh->btv", y, p["token_embedder"]["embedding"]) * cfg.emb_dim ** -0.5
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_every_parameter_has_logical_axes():
  for cfg in (TINY_CONFIG, TINY_CONFIG.replace(scan_layers=True),
              TINY_CONFIG.replace(shared_relative_bias=False)):
    shapes, specs = params_lib.abstract_params(T5(cfg))
    flat_shapes, flat_specs = tree_lib.flatten(shapes), tree_lib.flatten(
        jax.tree.map(lambda s: s, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    assert set(flat_shapes) == set(flat_specs)
    for name, spec in flat_specs.items():
      assert isinstance(spec, jax.sharding.PartitionSpec), name
      assert len(spec) == len(flat_shapes[name].shape), name
      assert all(isinstance(a, str) for a in spec), (name, spec)
    if cfg.scan_layers:
      assert flat_specs["encoder/layers/layer/attention/query/kernel"] == (
          jax.sharding.PartitionSpec("layers", "embed", "joined_kv"))
  assert flat_specs["token_embedder/embedding"] == jax.sharding.PartitionSpec("vocab", "embed")


def test_identity_seam_is_plain_t5():
  p = _params()
  plain = T5(TINY_CONFIG).apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  seamed_model = T5(TINY_CONFIG, encoder_prompt=Identity(), decoder_prompt=Identity())
  seamed = seamed_model.apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  np.testing.assert_array_equal(plain, seamed)


def test_encoder_seam_prefix_equals_prepended_tokens():
  prefix = (20, 21, 22)
  model = T5(TINY_CONFIG, encoder_prompt=TokenPrefix(prefix))
  p = params_lib.init_params(model, jax.random.PRNGKey(0))
  assert p["encoder_prompt"]["table"].shape == (3, TINY_CONFIG.emb_dim)
  p = _with_table_from_embeddings(p, prefix, "encoder_prompt")
  seamed = model.apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  encoded, mask = model.apply({"params": p}, ENC, method=T5.encode)
  assert encoded.shape[1] == ENC.shape[1] + 3
  np.testing.assert_array_equal(mask, jnp.concatenate([jnp.ones((2, 3), bool), ENC > 0], 1))
  plain_params = {k: v for k, v in p.items() if k != "encoder_prompt"}
  hard = jnp.concatenate([jnp.broadcast_to(jnp.array(prefix), (2, 3)), ENC], axis=1)
  plain = T5(TINY_CONFIG).apply({"params": plain_params}, hard, DEC_IN, DEC_TGT)
  np.testing.assert_allclose(seamed, plain, rtol=1e-5, atol=1e-5)
  # And the prompt matters: a different table changes the logits.
  p["encoder_prompt"]["table"] = p["encoder_prompt"]["table"] + 1.0
  assert not np.allclose(model.apply({"params": p}, ENC, DEC_IN, DEC_TGT), seamed, atol=1e-3)


def test_seam_mask_reaches_self_and_cross_attention():
  p = _params()
  seamed = T5(TINY_CONFIG, encoder_prompt=DropLast()).apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  last = jnp.sum(ENC > 0, axis=1) - 1
  padded = jnp.where(jnp.arange(ENC.shape[1])[None, :] == last[:, None], 0, ENC)
  plain = T5(TINY_CONFIG).apply({"params": p}, padded, DEC_IN, DEC_TGT)
  # Padded decoder rows see no key, so their (unused) output is a uniform mix
  # over positions that legitimately differ; compare the real rows.
  valid = DEC_TGT > 0
  np.testing.assert_allclose(np.asarray(seamed)[valid], np.asarray(plain)[valid],
                             rtol=1e-5, atol=1e-5)
  unmasked = T5(TINY_CONFIG).apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  assert not np.allclose(np.asarray(unmasked)[valid], np.asarray(plain)[valid], atol=1e-3)


def test_decoder_seam_prefix_equals_prepended_tokens():
  prefix = (30, 31)
  model = T5(TINY_CONFIG, decoder_prompt=TokenPrefix(prefix))
  p = _with_table_from_embeddings(params_lib.init_params(model, jax.random.PRNGKey(0)),
                                  prefix, "decoder_prompt")
  seamed = model.apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  assert seamed.shape == (2, 4, TINY_CONFIG.vocab_size)
  plain_params = {k: v for k, v in p.items() if k != "decoder_prompt"}
  hard_in = jnp.concatenate([jnp.broadcast_to(jnp.array(prefix), (2, 2)), DEC_IN], axis=1)
  hard_tgt = jnp.concatenate([jnp.full((2, 2), 2), DEC_TGT], axis=1)  # any non-pad
  plain = T5(TINY_CONFIG).apply({"params": plain_params}, ENC, hard_in, hard_tgt)[:, 2:]
  valid = DEC_TGT > 0
  np.testing.assert_allclose(np.asarray(seamed)[valid], np.asarray(plain)[valid],
                             rtol=1e-5, atol=1e-5)


def test_cached_decoding_refuses_decoder_prompt():
  model = T5(TINY_CONFIG, decoder_prompt=Identity())
  p = params_lib.init_params(model, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="decoder-side prompt"):
    model.apply({"params": p}, ENC, DEC_IN, decode=True, mutable=["cache"])


@pytest.mark.parametrize("changes", [dict(scan_layers=True), dict(remat_policy="full"),
                                     dict(scan_layers=True, remat_policy="dots"),
                                     dict(scan_layers=True, remat_policy="minimal")])
def test_scan_and_remat_match_unrolled(changes):
  base = _params()
  cfg = TINY_CONFIG.replace(**changes)
  flat = tree_lib.flatten(base)
  if cfg.scan_layers:
    flat = params_lib.stack_layers(flat, {"encoder": 2, "decoder": 2})
  p = tree_lib.unflatten(flat)

  def loss(model, params):
    logits = model.apply({"params": params}, ENC, DEC_IN, DEC_TGT)
    return jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(DEC_TGT, logits.shape[-1]))

  l0, g0 = jax.value_and_grad(lambda q: loss(T5(TINY_CONFIG), q))(base)
  l1, g1 = jax.jit(jax.value_and_grad(lambda q: loss(T5(cfg), q)))(p)
  np.testing.assert_allclose(l0, l1, rtol=1e-5)
  g1_flat = tree_lib.flatten(g1)
  if cfg.scan_layers:
    g1_flat = params_lib.unstack_layers(g1_flat)
  for name, g in tree_lib.flatten(g0).items():
    np.testing.assert_allclose(g, g1_flat[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_jit_and_eager_agree():
  model = T5(TINY_CONFIG)
  p = _params()
  eager = model.apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  jitted = jax.jit(lambda q, e, d, t: model.apply({"params": q}, e, d, t))(p, ENC, DEC_IN, DEC_TGT)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


def test_param_and_activation_dtypes_are_separate():
  cfg = TINY_CONFIG.replace(weight_dtype="bfloat16", dtype="float32")
  p = _params(cfg)
  assert {x.dtype for x in jax.tree.leaves(p)} == {jnp.dtype(jnp.bfloat16)}
  out = T5(cfg).apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  assert out.dtype == jnp.float32  # logits are returned in float32

  p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p)
  full = T5(TINY_CONFIG).apply({"params": p32}, ENC, DEC_IN, DEC_TGT)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)  # same weights, f32 compute
  bf16 = T5(TINY_CONFIG.replace(dtype="bfloat16")).apply({"params": p32}, ENC, DEC_IN, DEC_TGT)
  assert bool(jnp.all(jnp.isfinite(bf16)))
  err = float(jnp.max(jnp.abs(bf16 - full)))
  assert 0 < err < 0.1 * float(jnp.max(jnp.abs(full)))


def test_dropout_changes_outputs_only_when_enabled():
  cfg = TINY_CONFIG.replace(dropout_rate=0.3)
  model = T5(cfg)
  p = _params(cfg)
  a = model.apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  b = model.apply({"params": p}, ENC, DEC_IN, DEC_TGT, enable_dropout=True,
                  rngs={"dropout": jax.random.PRNGKey(1)})
  c = T5(TINY_CONFIG).apply({"params": p}, ENC, DEC_IN, DEC_TGT)
  np.testing.assert_array_equal(a, c)
  assert not np.allclose(a, b)


def test_bad_config_values_are_rejected():
  with pytest.raises(ValueError, match="weight_dtype"):
    T5Config(weight_dtype="float8")
  with pytest.raises(ValueError, match="remat_policy"):
    T5Config(remat_policy="sometimes")
  with pytest.raises(ValueError, match="Unknown MLP activation"):
    params_lib.init_params(T5(TINY_CONFIG.replace(mlp_activations=("swish9",))),
                           jax.random.PRNGKey(0))


def _closed_form_count(c: T5Config) -> int:
  """Parameter count from the architecture, written independently of the model."""
  h, inner = c.emb_dim, c.num_heads * c.head_dim
  attn = 4 * h * inner
  mlp = len(c.mlp_activations) * h * c.mlp_dim + c.mlp_dim * h
  rel = c.num_heads * c.relative_attention_num_buckets
  enc = c.num_encoder_layers * (attn + mlp + 2 * h) + h
  dec = c.num_decoder_layers * (2 * attn + mlp + 3 * h) + h
  rel_total = 2 * rel if c.shared_relative_bias else (c.num_encoder_layers +
                                                       c.num_decoder_layers) * rel
  head = 0 if c.logits_via_embedding else h * c.vocab_size
  return c.vocab_size * h + enc + dec + rel_total + head


CONFIG_FILES = sorted(f"models/{family}_{size}.gin"
                      for family, (sizes, _) in presets.FAMILIES.items() for size in sizes)


def test_size_gin_files_exist():
  on_disk = {os.path.relpath(f, gin_utils.configs_dir())
             for f in glob.glob(os.path.join(gin_utils.configs_dir(), "models", "*.gin"))}
  assert set(CONFIG_FILES) <= on_disk
  for family, sizes in (("t5_1_1", ["small", "base", "large", "xl", "xxl"]),
                        ("t5_1_0", ["small", "base", "large", "3B", "11B"])):
    for size in sizes:
      assert f"models/{family}_{size}.gin" in CONFIG_FILES
      assert os.path.exists(os.path.join(gin_utils.configs_dir(), "sizes", f"{family}_{size}.gin"))


@pytest.mark.parametrize("gin_file", CONFIG_FILES)
def test_gin_model_files_build_the_published_sizes(gin_file):
  import gin
  gin.clear_config()
  cfg = gin_utils.model_config_from_gin([gin_file])
  family, size = os.path.basename(gin_file)[:-4].rsplit("_", 1)
  assert cfg == presets.preset(family, size)
  shapes, _ = params_lib.abstract_params(T5(cfg))  # abstract: nothing allocated
  assert params_lib.param_count(shapes) == _closed_form_count(cfg)
  gin.clear_config()


def test_published_parameter_counts():
  # Counts of the released checkpoints (T5 1.1 small 77.0M and base 247.6M).
  for size, millions in (("small", 77.0), ("base", 247.6)):
    shapes, _ = params_lib.abstract_params(T5(presets.preset("t5_1_1", size)))
    assert round(params_lib.param_count(shapes) / 1e6, 1) == millions


def test_abstract_params_are_kept_per_model_and_each_caller_gets_its_own_tree():
  small = presets.preset("t5_1_1", "small")
  first, _ = params_lib.abstract_params(T5(small))
  first["encoder"] = None  # A caller editing its tree must not change the next caller's.
  second, specs = params_lib.abstract_params(T5(small))
  assert second["encoder"] is not None and specs["encoder"] is not None
  assert round(params_lib.param_count(second) / 1e6, 1) == 77.0
  # Another configuration is traced anew, not served the first one's shapes.
  base, _ = params_lib.abstract_params(T5(presets.preset("t5_1_1", "base")))
  assert round(params_lib.param_count(base) / 1e6, 1) == 247.6


def test_gin_binding_overrides_and_errors():
  import gin
  gin.clear_config()
  cfg = gin_utils.model_config_from_gin(["models/t5_1_1_small.gin"],
                                        ["T5Config.dtype = 'bfloat16'", "T5Config.scan_layers = True"])
  assert cfg.dtype == "bfloat16" and cfg.scan_layers and cfg.emb_dim == 512
  gin.clear_config()
  with pytest.raises(FileNotFoundError, match="gin file 'models/t5_9_9.gin' not found"):
    gin_utils.parse_gin(["models/t5_9_9.gin"])
  gin.clear_config()
  with pytest.raises(ValueError, match="Bad gin configuration.*no_such_field"):
    gin_utils.parse_gin(["models/t5_1_1_small.gin"], ["T5Config.no_such_field = 3"])
  gin.clear_config()


def test_eight_bit_dropout_masks_keep_the_rounded_rate_and_the_expectation():
  from prompt_tuning.models import layers
  x = jnp.ones((64, 128, 33))
  drop = layers.Dropout(rate=0.1, mask_bits=8)
  out = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  keep = 230 / 256  # 0.9 rounded to a multiple of 1/256
  kept = np.asarray(out) != 0
  assert abs(kept.mean() - keep) < 0.005  # 270k draws: the standard error is 0.0006
  np.testing.assert_allclose(np.asarray(out)[kept], 1 / keep, rtol=1e-6)
  assert abs(float(out.mean()) - 1.0) < 0.01  # inverted dropout keeps the mean
  # Different keys give different masks; eval mode is the identity.
  other = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert (np.asarray(other) != 0).tolist() != kept.tolist()
  np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)
  exact = layers.Dropout(rate=0.1, mask_bits=32).apply(
      {}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  assert abs((np.asarray(exact) != 0).mean() - 0.9) < 0.005
  with pytest.raises(ValueError, match="dropout_mask_bits=16"):
    TINY_CONFIG.replace(dropout_mask_bits=16)
  with pytest.raises(ValueError, match="remat_policy='some'"):
    TINY_CONFIG.replace(remat_policy="some")
