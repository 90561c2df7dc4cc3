"""T5 encoder-decoder (1.0, 1.1, LM-adapted, Flan, mT5, umT5) with a prompt seam.

Parameter names follow T5X (`token_embedder/embedding`,
`encoder/layers_0/attention/query/kernel`, `decoder/logits_dense/kernel`, ...)
so that T5X checkpoints load by name. With `scan_layers=True` the layers are
stacked under `encoder/layers/...` with a leading `layers` axis instead.

The prompt seam: `T5(config, encoder_prompt=M)` runs `M` on the embedded
encoder inputs before the first layer. `M(embedded_BLH, tokens_BL, mask_BL,
deterministic=..., **features)` returns `(embedded_BMH, mask_BM)`: the
sequence to run (it may be longer than L) and its mask. Encoder
self-attention, and the decoder's cross-attention, use the returned mask.
It may return a third item, `{"self_attention_mask": [B, M, M]}`: which
positions encoder self-attention lets see which (prompt attention masks),
used instead of the square of the mask, which then serves cross-attention. `decoder_prompt` does the same for the decoder
input; the logits of the positions it adds are dropped.

Per-layer conditioning (deep prompts / prefix tuning, IA3, HyperPrompt): an
encoder module may also define `layer_conditioning(batch_size,
deterministic=..., **features)`, returning per stack ("encoder", "decoder")
and per place in a layer a dict of arrays with a leading `layers` axis:

    {"encoder": {"self_attention": {"prefix": (k, v), "scale": (lk, lv)},
                 "mlp": {"scale": l_ff}},
     "decoder": {"self_attention": ..., "cross_attention": ..., "mlp": ...}}

with prefixes k, v [layers, B or 1, P, N, D] prepended to the keys and
values, and scales lk, lv [layers, N * D] and l_ff [layers, F] multiplying
the projected keys, values and the MLP's intermediate activation. Both
stacks call it (the decoder at every cached decoding step too), layers
scanned or unrolled. With no module the model is plain T5.

Shape key: B batch, L encoder length, T decoder length, H model width,
V vocabulary, M encoder length after the prompt seam.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models import layers

Array = jax.Array


REMAT_POLICIES = ("none", "full", "dots", "minimal")


@registry.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture and numerics of one T5; field names follow T5X's T5Config."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  # ("gelu", "linear") is T5 1.1's gated GELU; ("relu",) is T5 1.0.
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  # True for T5 1.0: logits from the embedding table, after scaling by H^-0.5.
  logits_via_embedding: bool = False
  dropout_rate: float = 0.0
  # 8: dropout masks from 8-bit random values (the rate rounded to a multiple
  # of 1/256, several times faster on CPU); 32: Flax's exact Dropout.
  dropout_mask_bits: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # False gives every layer its own relative-position table (umT5).
  shared_relative_bias: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"         # activations
  weight_dtype: str = "float32"  # parameters as stored
  float32_attention_logits: bool = True
  scan_layers: bool = False
  # "none", "full" (recompute each layer in the backward pass), "dots" (save
  # matmul outputs, recompute the rest) or "minimal" (save only the outputs of
  # weight matmuls, i.e. dots without batch dimensions: attention scores and
  # elementwise results are recomputed).
  remat_policy: str = "none"
  # Long-input attention one example at a time (layers.attend_one_example_at_a_time):
  # the same values, faster and smaller on a CPU, slower on an accelerator.
  # None: on where JAX's default backend is the CPU and this process sees one
  # device (a loop over a batch sharded across devices would gather it).
  attention_example_loop: Optional[bool] = None

  def __post_init__(self):
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for name in ("dtype", "weight_dtype"):
      value = getattr(self, name)
      if value not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"T5Config.{name}={value!r}; expected float32, bfloat16 or float16")
    if self.dropout_mask_bits not in (8, 32):
      raise ValueError(f"T5Config.dropout_mask_bits={self.dropout_mask_bits}; expected 8 or 32")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"T5Config.remat_policy={self.remat_policy!r}; "
                       f"expected one of {REMAT_POLICIES}")

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def param_dtype(self):
    return jnp.dtype(self.weight_dtype)

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)


def _common(cfg: T5Config) -> dict[str, Any]:
  return dict(dtype=cfg.activation_dtype, weight_dtype=cfg.param_dtype)


def _relpos(cfg: T5Config, bidirectional: bool, name: str) -> layers.RelativePositionBias:
  return layers.RelativePositionBias(
      num_heads=cfg.num_heads, num_buckets=cfg.relative_attention_num_buckets,
      max_distance=cfg.relative_attention_max_distance, bidirectional=bidirectional,
      name=name, **_common(cfg))


def _attention(cfg: T5Config, name: str) -> layers.MultiHeadAttention:
  return layers.MultiHeadAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout_rate=cfg.dropout_rate,
      dropout_mask_bits=cfg.dropout_mask_bits, example_loop=attention_example_loop(cfg),
      float32_logits=cfg.float32_attention_logits, name=name, **_common(cfg))


def attention_example_loop(cfg: T5Config) -> bool:
  """`cfg.attention_example_loop`, with None resolved for this process."""
  if cfg.attention_example_loop is not None:
    return cfg.attention_example_loop
  return jax.default_backend() == "cpu" and jax.device_count() == 1


def _norm(cfg: T5Config, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(epsilon=cfg.layer_norm_epsilon, name=name, **_common(cfg))


# Where per-layer conditioning may go, per stack, and what each place takes.
CONDITIONING_PLACES = {"encoder": ("self_attention", "mlp"),
                       "decoder": ("self_attention", "cross_attention", "mlp")}
_PLACE_ENTRIES = {"self_attention": ("prefix", "scale"), "cross_attention": ("prefix", "scale"),
                  "mlp": ("scale",)}


def _attention_kwargs(conditioning: Optional[Mapping[str, Any]], place: str) -> dict:
  entry = (conditioning or {}).get(place) or {}
  return dict(prefix_kv=entry.get("prefix"), kv_scale=entry.get("scale"))


def _mlp_scale(conditioning: Optional[Mapping[str, Any]]) -> Optional[Array]:
  return ((conditioning or {}).get("mlp") or {}).get("scale")


def check_conditioning(conditioning: Mapping[str, Any], stack: str, num_layers: int) -> None:
  """One clear error for per-layer conditioning of the wrong form or layer count."""
  for place, entry in conditioning.items():
    if place not in CONDITIONING_PLACES[stack]:
      raise ValueError(f"Per-layer conditioning for {stack} place {place!r}; expected one of "
                       f"{CONDITIONING_PLACES[stack]}")
    for name, value in entry.items():
      if name not in _PLACE_ENTRIES[place]:
        raise ValueError(f"Per-layer conditioning {stack}/{place}/{name}; expected one of "
                         f"{_PLACE_ENTRIES[place]}")
      for leaf in jax.tree.leaves(value):
        if leaf.shape[0] != num_layers:
          raise ValueError(f"Per-layer conditioning {stack}/{place}/{name} is for "
                           f"{leaf.shape[0]} layers, but the {stack} has {num_layers}")


def layer_conditioning(module: Optional[nn.Module], stack: str, batch_size: int,
                       deterministic: bool, features: Optional[Mapping[str, Array]]
                       ) -> Optional[dict]:
  """The per-layer conditioning `module` gives `stack`, or None."""
  if module is None or not hasattr(module, "layer_conditioning"):
    return None
  out = module.layer_conditioning(batch_size, deterministic=deterministic, **(features or {}))
  return (out or {}).get(stack) or None


def _dropout(cfg: T5Config, x: Array, deterministic: bool) -> Array:
  if deterministic or cfg.dropout_rate == 0:
    return x
  return layers.Dropout(cfg.dropout_rate, cfg.dropout_mask_bits)(x, deterministic=False)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention then MLP, each added back to the residual."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BMH: Array, bias: tuple[Array, ...], positions_M: Array,
               conditioning: Optional[Mapping[str, Any]] = None) -> Array:
    """`conditioning`: this layer's slice of the per-layer conditioning."""
    cfg, deterministic = self.config, self.deterministic
    if not cfg.shared_relative_bias:
      bias = (*bias, _relpos(cfg, True, "relpos_bias")(positions_M, positions_M))
    y = _norm(cfg, "pre_attention_layer_norm")(x_BMH)
    y = _attention(cfg, "attention")(y, y, bias, deterministic=deterministic,
                                     **_attention_kwargs(conditioning, "self_attention"))
    x_BMH = x_BMH + _dropout(cfg, y, deterministic)
    y = _norm(cfg, "pre_mlp_layer_norm")(x_BMH)
    y = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate,
                        dropout_mask_bits=cfg.dropout_mask_bits, name="mlp",
                        **_common(cfg))(y, deterministic=deterministic,
                                        scale_F=_mlp_scale(conditioning))
    return x_BMH + _dropout(cfg, y, deterministic)


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention, then MLP."""
  config: T5Config
  deterministic: bool = True
  decode: bool = False
  cross_cache: str = "none"  # see layers.MultiHeadAttention

  @nn.compact
  def __call__(self, y_BTH: Array, encoded_BMH: Array, self_bias: tuple[Array, ...],
               cross_bias: Array,
               query_positions_T: Array, key_positions: Array,
               decode_index: Optional[Array],
               conditioning: Optional[Mapping[str, Any]] = None) -> Array:
    cfg, deterministic, decode = self.config, self.deterministic, self.decode
    if not cfg.shared_relative_bias:
      self_bias = (*self_bias, _relpos(cfg, False, "relpos_bias")(query_positions_T,
                                                                    key_positions))
    z = _norm(cfg, "pre_self_attention_layer_norm")(y_BTH)
    z = _attention(cfg, "self_attention")(z, z, self_bias, deterministic=deterministic,
                                          decode=decode, decode_index=decode_index,
                                          **_attention_kwargs(conditioning, "self_attention"))
    y_BTH = y_BTH + _dropout(cfg, z, deterministic)
    z = _norm(cfg, "pre_cross_attention_layer_norm")(y_BTH)
    z = _attention(cfg, "encoder_decoder_attention")(z, encoded_BMH, cross_bias,
                                                     deterministic=deterministic,
                                                     cross_cache=self.cross_cache,
                                                     **_attention_kwargs(conditioning,
                                                                         "cross_attention"))
    y_BTH = y_BTH + _dropout(cfg, z, deterministic)
    z = _norm(cfg, "pre_mlp_layer_norm")(y_BTH)
    z = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate,
                        dropout_mask_bits=cfg.dropout_mask_bits, name="mlp",
                        **_common(cfg))(z, deterministic=deterministic,
                                        scale_F=_mlp_scale(conditioning))
    return y_BTH + _dropout(cfg, z, deterministic)


def _remat(cls, cfg: T5Config):
  if cfg.remat_policy == "none":
    return cls
  policy = {"dots": jax.checkpoint_policies.checkpoint_dots,
            "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
            "full": jax.checkpoint_policies.nothing_saveable}[cfg.remat_policy]
  return nn.remat(cls, policy=policy, prevent_cse=not cfg.scan_layers)


class _ScanBody(nn.Module):
  """Wraps a layer as a scan body: carry in, (carry, None) out."""
  layer_cls: Any
  config: T5Config
  layer_kwargs: Mapping[str, Any]

  @nn.compact
  def __call__(self, carry, *args):
    return self.layer_cls(self.config, name="layer", **self.layer_kwargs)(carry, *args), None


def _run_layers(cfg: T5Config, layer_cls, num_layers: int, x: Array, args: tuple,
                conditioning: Optional[Mapping[str, Any]] = None, **layer_kwargs) -> Array:
  """Applies `num_layers` layers, unrolled as `layers_i` or scanned as `layers`.

  `conditioning`: per-layer arrays with a leading `layers` axis (see the
  module docstring); layer i gets slice i, unrolled or as a scan input.
  """
  cls = _remat(layer_cls, cfg)
  extra = ()
  if conditioning:
    extra = (conditioning,)
  if not cfg.scan_layers:
    for i in range(num_layers):
      layer_extra = tuple(jax.tree.map(lambda a: a[i], e) for e in extra)
      x = cls(cfg, name=f"layers_{i}", **layer_kwargs)(x, *args, *layer_extra)
    return x
  # The cache is stacked on axis 1 so that the batch stays on axis 0.
  scanned = nn.scan(
      _ScanBody, variable_axes={"params": 0, "cache": 1},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * len(args) + (0,) * len(extra), length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = scanned(cls, cfg, layer_kwargs, name="layers")(x, *args, *extra)
  return x


class Encoder(nn.Module):
  """Embeds, runs the prompt seam, then the encoder stack."""
  config: T5Config
  shared_embedding: nn.Module
  prompt: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, encoder_input_tokens_BL: Array, deterministic: bool = True,
               prompt_features: Optional[Mapping[str, Array]] = None
               ) -> tuple[Array, Array]:
    """Returns the encoded sequence [B, M, H] and its mask [B, M]."""
    cfg = self.config
    mask_BL = encoder_input_tokens_BL > 0
    x = self.shared_embedding(encoder_input_tokens_BL.astype(jnp.int32))
    self_mask = None
    if self.prompt is not None:
      out = self.prompt(x, encoder_input_tokens_BL, mask_BL, deterministic=deterministic,
                        **(prompt_features or {}))
      x, mask_BL = out[:2]
      self_mask = _seam_extras(out, "encoder").get("self_attention_mask")
    conditioning = layer_conditioning(self.prompt, "encoder", x.shape[0], deterministic,
                                      prompt_features)
    if conditioning:
      check_conditioning(conditioning, "encoder", cfg.num_encoder_layers)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = _dropout(cfg, x, deterministic)
    positions = jnp.arange(x.shape[1])
    # Biases stay separate terms ([B, 1, M, M] mask, [1, N, M, M] positions) and
    # are added inside each attention, where XLA fuses them into the softmax
    # instead of keeping a [B, N, M, M] sum alive per layer for the backward.
    visible = mask_BL[:, :, None] & mask_BL[:, None, :] if self_mask is None else self_mask
    bias = (layers.mask_to_bias(visible),)
    if cfg.shared_relative_bias:
      bias = (*bias, _relpos(cfg, True, "relpos_bias")(positions, positions))
    x = _run_layers(cfg, EncoderLayer, cfg.num_encoder_layers, x, (bias, positions),
                    conditioning=conditioning, deterministic=deterministic)
    x = _norm(cfg, "encoder_norm")(x)
    return _dropout(cfg, x, deterministic), mask_BL


class Decoder(nn.Module):
  """The decoder stack and the output projection."""
  config: T5Config
  shared_embedding: nn.Module
  prompt: Optional[nn.Module] = None
  # The encoder's prompt module, asked for the decoder's per-layer conditioning.
  layer_prompt: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, encoded_BMH: Array, encoder_mask_BM: Array,
               decoder_input_tokens_BT: Array, decoder_target_tokens_BT: Optional[Array] = None,
               deterministic: bool = True, decode: bool = False,
               prompt_features: Optional[Mapping[str, Array]] = None,
               cross_cache: str = "none") -> Array:
    """Returns logits [B, T, V] (float32).

    In decode mode, T new tokens are appended to the cache and attend to
    everything cached before them; call once with the full decode length
    (inside `init`) to create the cache. `cross_cache` ("fill" once, then
    "use") keeps the cross-attention keys and values of the encoder output in
    the cache instead of projecting them at every step.
    """
    cfg = self.config
    y = self.shared_embedding(decoder_input_tokens_BT.astype(jnp.int32))
    b, t = decoder_input_tokens_BT.shape
    if decoder_target_tokens_BT is None:
      query_mask_BT = jnp.ones((b, t), bool)
    else:
      query_mask_BT = decoder_target_tokens_BT > 0
    num_prompt = 0
    if self.prompt is not None:
      if decode:
        raise ValueError("Cached decoding does not support a decoder-side prompt; "
                         "decode with use_cache=False instead.")
      out = self.prompt(y, decoder_input_tokens_BT, query_mask_BT,
                        deterministic=deterministic, **(prompt_features or {}))
      if len(out) > 2:
        raise ValueError(f"{type(self.prompt).__name__} returns a self-attention mask, which "
                         "only the encoder seam takes; use it as the encoder prompt")
      y, query_mask_BT = out
      num_prompt = y.shape[1] - t
    conditioning = layer_conditioning(self.layer_prompt, "decoder", b, deterministic,
                                      prompt_features)
    if conditioning:
      check_conditioning(conditioning, "decoder", cfg.num_decoder_layers)
    t_total = y.shape[1]
    y = nn.with_logical_constraint(y, ("batch", "length", "embed"))
    y = _dropout(cfg, y, deterministic)

    decode_index = None
    if decode:
      is_initialized = self.has_variable("cache", "decode_index")
      index = self.variable("cache", "decode_index", lambda: jnp.zeros((), jnp.int32))
      if is_initialized:
        decode_index = index.value
        index.value = index.value + t_total
    if decode_index is not None:
      # Queries are the new positions; keys are the whole cache. A [B]
      # decode_index (see decoding.init_cache's `per_row`) puts each row at
      # its own position: query positions [B, T], per-row masks and biases.
      cache_len = self._cache_length()
      query_BT = decode_index.reshape((-1, 1)) + jnp.arange(t_total)[None]  # [1 or B, T]
      query_positions = query_BT[0] if decode_index.ndim == 0 else query_BT
      key_positions = jnp.arange(cache_len)
      visible = key_positions[None, None, :] <= query_BT[:, :, None]
      self_mask = jnp.broadcast_to(visible, (b, t_total, cache_len))
    else:
      query_positions = key_positions = jnp.arange(t_total)
      causal = key_positions[None, :] <= query_positions[:, None]
      self_mask = causal[None] & query_mask_BT[:, :, None] & query_mask_BT[:, None, :]
    self_bias = (layers.mask_to_bias(self_mask),)
    if cfg.shared_relative_bias:
      self_bias = (*self_bias, _relpos(cfg, False, "relpos_bias")(query_positions,
                                                                   key_positions))
    cross_bias = layers.mask_to_bias(query_mask_BT[:, :, None] & encoder_mask_BM[:, None, :])

    y = _run_layers(cfg, DecoderLayer, cfg.num_decoder_layers, y,
                    (encoded_BMH, self_bias, cross_bias, query_positions, key_positions,
                     decode_index),
                    conditioning=conditioning,
                    deterministic=deterministic, decode=decode, cross_cache=cross_cache)
    y = _norm(cfg, "decoder_norm")(y)
    y = _dropout(cfg, y, deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) * (cfg.emb_dim ** -0.5)
    else:
      logits = layers.Dense(cfg.vocab_size, ("embed", "vocab"), name="logits_dense",
                            **_common(cfg))(y)
    logits = logits[:, num_prompt:].astype(jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

  def _cache_length(self) -> int:
    """Maximum decode length, read off the first self-attention cache."""
    cache = self.variables["cache"]
    layer = cache["layers_0"] if "layers_0" in cache else cache["layers"]["layer"]
    cached_key = layer["self_attention"]["cached_key"]
    return cached_key.shape[-3]


def _seam_extras(out: tuple, side: str) -> Mapping[str, Array]:
  """The optional third item of a prompt module's output, checked."""
  if len(out) == 2:
    return {}
  extras = out[2]
  if len(out) != 3 or not isinstance(extras, Mapping) or set(extras) - {"self_attention_mask"}:
    raise ValueError(f"The {side} prompt module returned {len(out)} items; expected "
                     "(sequence, mask) or (sequence, mask, {'self_attention_mask': [B, M, M]})")
  return extras


def shift_right(tokens_BL: Array, start_id: int = 0) -> Array:
  """Decoder inputs from targets: prepend the start token (0, pad), drop the last."""
  return jnp.pad(tokens_BL, ((0, 0), (1, 0)), constant_values=start_id)[:, :-1]


class T5(nn.Module):
  """The encoder-decoder. `__call__` gives teacher-forced logits [B, T, V]."""
  config: T5Config
  encoder_prompt: Optional[nn.Module] = None
  decoder_prompt: Optional[nn.Module] = None

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, **_common(cfg))
    if hasattr(self.decoder_prompt, "layer_conditioning"):
      raise ValueError(f"{type(self.decoder_prompt).__name__} conditions layers of both "
                       "stacks: plug it in as the encoder prompt (ENCODER_PROMPT), not the "
                       "decoder prompt")
    self.encoder = Encoder(cfg, self.token_embedder, self.encoder_prompt)
    self.decoder = Decoder(cfg, self.token_embedder, self.decoder_prompt,
                           layer_prompt=self.encoder_prompt)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_features: Optional[Mapping[str, Array]] = None) -> tuple[Array, Array]:
    """Returns (encoded [B, M, H], encoder mask [B, M])."""
    return self.encoder(encoder_input_tokens, deterministic=not enable_dropout,
                        prompt_features=prompt_features)

  def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = False,
             decode: bool = False,
             prompt_features: Optional[Mapping[str, Array]] = None,
             cross_cache: str = "none") -> Array:
    return self.decoder(encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens,
                        deterministic=not enable_dropout, decode=decode,
                        prompt_features=prompt_features, cross_cache=cross_cache)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = False,
               decode: bool = False,
               prompt_features: Optional[Mapping[str, Array]] = None) -> Array:
    encoded, mask = self.encode(encoder_input_tokens, enable_dropout, prompt_features)
    return self.decode(encoded, mask, decoder_input_tokens, decoder_target_tokens,
                       enable_dropout, decode, prompt_features)
