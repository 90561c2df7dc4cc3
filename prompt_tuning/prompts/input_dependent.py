"""Input-dependent prompt tuning (ID-PT, Levine et al. 2022, sec. 2): a prompt written per input.

The paper's setting (sec. 2, "input-dependent prompt tuning for multi-tasking a
frozen LM"): the frozen LM is J1-Large, a 7B *decoder-only* model, and it is
not the reader. Each input is first read by a separate, much smaller frozen
pretrained encoder (a T5 encoder); a small trained network of learned
queries attending to that reading writes the prompt, and only that network
trains. One generator serves the whole multi-task training mixture (the
tasks of T0's P3 collection), which tells tasks apart by their natural-
language templates, not by a task index. (The project's search tool reaches
only the paper's abstract, ar5iv 2204.10019, which confirms the frozen-LM
framing and the three methods; the sec. 2 details above were not re-read
from the section text, and the generator's size is not quoted for that
reason: check sec. 2 before relying on them.)

Two generators here, both giving a [P, H] prompt per example joined to the
input like a soft prompt:

- `FrozenReadingPrompt`, the paper's: queries cross-attend, through a few
  attention layers (`QueryGenerator`), to a frozen encoder's reading of the
  input. With `reader_checkpoint` the reader is a separate frozen T5 encoder
  read from its own checkpoint (the paper's arrangement: a small reader
  beside a large frozen LM). By default, for convenience on one backbone,
  the reader is the backbone's own encoder run on the input without a prompt,
  which needs the model wrapper `InputDependentT5`
  (`ModelSpec.model_class = @InputDependentT5`) and runs the encoder twice:
  once to read, once with the prompt.
- `InputDependentPrompt`, the earlier from-scratch generator: a small
  Transformer over the frozen token *embeddings*, then the queries. Kept as
  an option; it needs no wrapper.

Neither reads a task index: one generator serves a multi-task mixture.
Departures from the paper: the frozen LM is a T5 encoder-decoder, not a
decoder-only LM, so the prompt enters the encoder's input; the default
reader is that same backbone's encoder rather than a separate one; and the
reading enters through a learned projection when its width differs from the
generator's. `zero_reading` is a control of our own (issue 35): the same
generator fed zeros, so that equal parameters without input dependence can
be compared.

Shape key: B batch, L input length, R reading length, P prompt length, H model
width, G generator width, D reader width.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models import layers
from prompt_tuning.models.t5 import T5, Encoder, T5Config
from prompt_tuning.prompts import base
from prompt_tuning.prompts.base import join_prompt

Array = jax.Array

# Keys the wrapper passes to the prompt module among the prompt features
# (Python-level, inside one apply; never batch features).
READ_PASS = "_read_pass"     # True: the reading pass, the module adds nothing
READING = "_reading"         # (reading [B, R, D], mask [B, R])


def _dense(features: int, axes: tuple[str, str], name: str) -> layers.Dense:
  return layers.Dense(features, axes, kernel_init=nn.initializers.lecun_normal(), name=name)


class _GeneratorLayer(nn.Module):
  """A pre-norm Transformer layer over a sequence (self-attention, MLP)."""
  width: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x_BLG: Array, bias: Array) -> Array:
    head_dim = self.width // self.num_heads
    y = layers.RMSNorm(name="pre_attention_norm")(x_BLG)
    y = layers.MultiHeadAttention(self.num_heads, head_dim, name="attention")(y, y, bias)
    x_BLG = x_BLG + y
    y = layers.RMSNorm(name="pre_mlp_norm")(x_BLG)
    y = layers.MlpBlock(self.mlp_dim, ("gelu",), name="mlp")(y)
    return x_BLG + y


class _QueryLayer(nn.Module):
  """Queries attend to each other, then cross-attend to the reading, then an MLP."""
  width: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, q_BPG: Array, reading_BRG: Array, cross_bias: Array) -> Array:
    head_dim = self.width // self.num_heads
    y = layers.RMSNorm(name="pre_self_attention_norm")(q_BPG)
    no_mask = jnp.zeros((1, 1, 1, 1), jnp.float32)
    q_BPG = q_BPG + layers.MultiHeadAttention(self.num_heads, head_dim,
                                              name="self_attention")(y, y, no_mask)
    y = layers.RMSNorm(name="pre_cross_attention_norm")(q_BPG)
    q_BPG = q_BPG + layers.MultiHeadAttention(self.num_heads, head_dim, name="cross_attention")(
        y, reading_BRG, cross_bias)
    y = layers.RMSNorm(name="pre_mlp_norm")(q_BPG)
    return q_BPG + layers.MlpBlock(self.mlp_dim, ("gelu",), name="mlp")(y)


class QueryGenerator(nn.Module):
  """P learned queries cross-attending to a reading [B, R, D] -> [B, P, out_dim].

  Attributes:
    length: P. width: G. num_layers: query layers (each: self-attention,
    cross-attention to the reading, MLP). self_layers: Transformer layers run
    over the reading first (the neural-recursion connector's "small
    Transformer"; 0 for ID-PT, whose reading is already a pretrained
    encoder's). project_input: a learned D -> G projection of the reading;
    without it D must equal G. out_dim: the prompt width H.
  """
  length: int
  width: int
  out_dim: int
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  self_layers: int = 0
  project_input: bool = True

  @nn.compact
  def __call__(self, reading_BRD: Array, mask_BR: Array) -> Array:
    if self.width % self.num_heads:
      raise ValueError(f"Generator width {self.width} is not divisible by "
                       f"{self.num_heads} heads")
    x = reading_BRD.astype(jnp.float32)
    if self.project_input:
      x = _dense(self.width, ("prompt_embed", "generator"), "input_projection")(x)
    elif x.shape[-1] != self.width:
      raise ValueError(f"The reading's width {x.shape[-1]} differs from the generator width "
                       f"{self.width} and there is no input projection")
    self_bias = layers.mask_to_bias(mask_BR[:, :, None] & mask_BR[:, None, :])
    for i in range(self.self_layers):
      x = _GeneratorLayer(self.width, self.num_heads, self.mlp_dim, name=f"reading_layers_{i}")(
          x, self_bias)
    x = layers.RMSNorm(name="reading_norm")(x)
    b = x.shape[0]
    queries = base.param(self, "queries", (self.length, self.width), ("prompt", "generator"),
                         nn.initializers.normal(1.0))
    q = jnp.broadcast_to(queries[None], (b,) + queries.shape)
    cross_bias = layers.mask_to_bias(jnp.broadcast_to(
        mask_BR[:, None, :], (b, self.length, mask_BR.shape[1])))
    for i in range(self.num_layers):
      q = _QueryLayer(self.width, self.num_heads, self.mlp_dim, name=f"query_layers_{i}")(
          q, x, cross_bias)
    q = layers.RMSNorm(name="output_norm")(q)
    return _dense(self.out_dim, ("generator", "prompt_embed"), "output_projection")(q)


class LengthPrompt(base.PromptModule):
  """A prompt module that adds `length` (P) positions to the sequence."""
  length: int

  @property
  def num_positions(self) -> int:
    return self.length


class _ReaderEncoder(nn.Module):
  """A separate T5 encoder (embedding table + stack), named like T5's for loading."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.activation_dtype,
                                       weight_dtype=cfg.param_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)

  def __call__(self, tokens_BL: Array) -> tuple[Array, Array]:
    return self.encoder(tokens_BL, deterministic=True)


@registry.configurable
class FrozenReadingPrompt(LengthPrompt):
  """ID-PT as in the paper: queries over a frozen encoder's reading of the input.

  Attributes:
    length: P. width, num_layers, num_heads, mlp_dim: the query network.
    reader_checkpoint: None reads with the backbone's own encoder (needs
      `InputDependentT5`); a path reads with a separate frozen T5 encoder of
      `reader_config` loaded from that checkpoint (T5X or Hugging Face).
    reader_config: the separate reader's T5Config (with reader_checkpoint).
    project_reader: a learned projection from the reading's width to the
      generator's. Without it the generator runs at the backbone's width H,
      and a reader of another width is an error.
    zero_reading: a control (issue 35): the generator is fed a reading of zeros
      (with every position visible) instead of the input's, so its parameters
      are the same but the prompt no longer depends on the input; nothing reads
      the input, and the wrapper skips its reading pass.
    model_config: the backbone's config, filled by the ModelSpec.
  """
  width: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  reader_checkpoint: Optional[str] = None
  reader_config: Optional[T5Config] = None
  project_reader: bool = True
  zero_reading: bool = False
  model_config: Optional[T5Config] = None

  @property
  def reads_backbone(self) -> bool:
    return self.reader_checkpoint is None

  @property
  def builds_reader(self) -> bool:
    """Whether this module holds a separate frozen reader (read from its checkpoint)."""
    return not (self.reads_backbone or self.zero_reading)

  @property
  def needs_backbone_reading(self) -> bool:
    """Whether `InputDependentT5` must hand this module the backbone's reading."""
    return self.reads_backbone and not self.zero_reading

  def frozen_patterns(self) -> tuple[str, ...]:
    """Parameters under this module that stay frozen (the separate reader)."""
    # A pattern must match something: no reader, no pattern.
    return (r"encoder_prompt/reader/.*",) if self.builds_reader else ()

  def frozen_checkpoints(self) -> tuple[tuple[str, str, nn.Module], ...]:
    """(sub-path, checkpoint, model to read it as) for the frozen parts the backbone's
    checkpoint does not hold; the setup reads them (T5 names: token_embedder/,
    encoder/, decoder/; only the first two are kept)."""
    if not self.builds_reader:
      return ()
    return (("reader", self.reader_checkpoint, T5(self.reader_config, parent=None)),)

  def _check(self, h: int) -> None:
    if self.reads_backbone:
      return
    if self.reader_config is None:
      raise ValueError("FrozenReadingPrompt.reader_checkpoint is set but reader_config is not; "
                       "bind FrozenReadingPrompt.reader_config to the reader's T5Config")
    d = self.reader_config.emb_dim
    if d != h and not self.project_reader:
      raise ValueError(f"FrozenReadingPrompt: the reader's width {d} differs from the "
                       f"backbone's {h} and project_reader=False; set project_reader=True "
                       f"(a learned projection) or use a reader of width {h}")

  @nn.compact
  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **features) -> tuple[Array, Array]:
    h = embedded_BLH.shape[-1]
    self._check(h)
    if features.get(READ_PASS):
      return embedded_BLH, mask_BL  # The wrapper's reading pass: no prompt.
    if self.zero_reading:
      # The same [B, R, D] shape as a real reading (R = L), all zeros and all
      # visible: no value or mask the generator sees depends on the input.
      d = h if self.reads_backbone else self.reader_config.emb_dim
      reading = jnp.zeros(tokens_BL.shape + (d,), jnp.float32)
      reading_mask = jnp.ones_like(mask_BL)
    elif self.reads_backbone:
      if READING not in features:
        raise ValueError("FrozenReadingPrompt reads the input with the backbone's encoder and "
                         "needs the wrapper: bind ModelSpec.model_class = @InputDependentT5 "
                         "(or set reader_checkpoint for a separate reader)")
      reading, reading_mask = features[READING]
    else:
      reading, reading_mask = _ReaderEncoder(self.reader_config, name="reader")(tokens_BL)
    reading = jax.lax.stop_gradient(reading)  # Frozen: no backward through the reader.
    width = self.width if self.project_reader else reading.shape[-1]
    prompt_BPH = QueryGenerator(self.length, width, h, self.num_layers, self.num_heads,
                                self.mlp_dim, project_input=self.project_reader,
                                name="generator")(reading, reading_mask)
    return join_prompt(prompt_BPH.astype(self.dtype), embedded_BLH, mask_BL, self.combine)


@registry.configurable
class InputDependentT5(T5):
  """T5 whose encoder first reads the input without a prompt (frozen, no gradient)
  and hands that reading to the encoder prompt (`FrozenReadingPrompt`)."""

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_features: Optional[dict[str, Any]] = None) -> tuple[Array, Array]:
    features = dict(prompt_features or {})
    if getattr(self.encoder_prompt, "needs_backbone_reading", False):
      reading, mask = self.encoder(encoder_input_tokens, deterministic=True,
                                   prompt_features={**features, READ_PASS: True})
      features[READING] = (jax.lax.stop_gradient(reading), mask)
    return self.encoder(encoder_input_tokens, deterministic=not enable_dropout,
                        prompt_features=features)


@registry.configurable
class InputDependentPrompt(LengthPrompt):
  """The from-scratch generator over the frozen token embeddings.

  Attributes: length P; width G, num_layers, num_heads, mlp_dim of the generator.
  """
  width: int = 64
  num_layers: int = 1
  num_heads: int = 4
  mlp_dim: int = 128

  @nn.compact
  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **unused_features) -> tuple[Array, Array]:
    if self.width % self.num_heads:
      raise ValueError(f"Generator width {self.width} is not divisible by "
                       f"{self.num_heads} heads")
    h = embedded_BLH.shape[-1]
    x = _dense(self.width, ("prompt_embed", "generator"), "input_projection")(
        embedded_BLH.astype(jnp.float32))
    self_bias = layers.mask_to_bias(mask_BL[:, :, None] & mask_BL[:, None, :])
    for i in range(self.num_layers):
      x = _GeneratorLayer(self.width, self.num_heads, self.mlp_dim, name=f"layers_{i}")(
          x, self_bias)
    x = layers.RMSNorm(name="encoder_norm")(x)
    queries = base.param(self, "queries", (self.length, self.width), ("prompt", "generator"),
                         nn.initializers.normal(1.0))
    q_BPG = jnp.broadcast_to(queries[None], (x.shape[0],) + queries.shape)
    cross_bias = layers.mask_to_bias(jnp.broadcast_to(
        mask_BL[:, None, :], (x.shape[0], self.length, mask_BL.shape[1])))
    attended = layers.MultiHeadAttention(self.num_heads, self.width // self.num_heads,
                                         name="query_attention")(q_BPG, x, cross_bias)
    prompt_BPG = layers.RMSNorm(name="output_norm")(q_BPG + attended)
    prompt_BPH = _dense(h, ("generator", "prompt_embed"), "output_projection")(prompt_BPG)
    return join_prompt(prompt_BPH.astype(self.dtype), embedded_BLH, mask_BL, self.combine)
