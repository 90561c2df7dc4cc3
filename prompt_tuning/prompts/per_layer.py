"""What the per-layer methods (deep prompts, IA3, HyperPrompt) share.

They plug into the encoder seam but leave the input sequence alone; the
model asks them for `layer_conditioning(batch_size, deterministic=...,
**features)`, a nested dict with a leading `layers` axis on every array (the
format is in prompt_tuning.models.t5's docstring):

    {"encoder": {"self_attention": {"prefix": (k, v)}, "mlp": {"scale": l_ff}},
     "decoder": {"self_attention": ..., "cross_attention": ..., "mlp": ...}}

This module has the checked parameter helper (one clear error when a tree
trained for another model size is applied), the merge of several modules'
conditioning, and `CombinedPrompt`, which runs an input prompt and any
number of per-layer methods together (e.g. a soft prompt with IA3).

Shape key: B batch, L input length, P prefix length, N heads, D head width,
H model width.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.prompts import base

Array = jax.Array
Conditioning = dict[str, dict[str, dict[str, Any]]]

# The attention kinds a per-layer prompt can go into: (stack, place in layer).
ATTENTION_KINDS = {"encoder_self": ("encoder", "self_attention"),
                   "decoder_self": ("decoder", "self_attention"),
                   "cross": ("decoder", "cross_attention")}


def require_config(module: nn.Module) -> T5Config:
  cfg = getattr(module, "model_config", None)
  if cfg is None:
    raise ValueError(f"{type(module).__name__} needs the backbone's T5Config: build the model "
                     "through ModelSpec (which fills it in) or pass model_config")
  return cfg


def stack_layers(cfg: T5Config, stack: str) -> int:
  return cfg.num_encoder_layers if stack == "encoder" else cfg.num_decoder_layers


def layer_param(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str],
                init: Callable[..., Array], what: str) -> Array:
  """`base.param`, but a tree made for another model size fails with one line.

  Flax would report a bare shape mismatch; this names the method, the
  parameter, both shapes and what the expected shape means (`what`, e.g.
  "[encoder layers=2, N*D=16]").
  """
  if module.has_variable("params", name):
    found = jnp.shape(nn.meta.unbox(module.get_variable("params", name)))
    if tuple(found) != tuple(shape):
      raise ValueError(f"{type(module).__name__} parameter {name!r} has shape {tuple(found)}, "
                       f"but this model needs {tuple(shape)} {what}: it was trained for "
                       "another model size")
  return base.param(module, name, shape, axes, init, getattr(module, "dtype", jnp.float32))


def add(conditioning: Conditioning, stack: str, place: str, entry: str, value: Any
        ) -> Conditioning:
  """Puts `value` at conditioning[stack][place][entry] (in place; returned)."""
  conditioning.setdefault(stack, {}).setdefault(place, {})[entry] = value
  return conditioning


def merge(parts: Sequence[Optional[Conditioning]]) -> Conditioning:
  """Several modules' conditioning as one: prefixes join along P, scales multiply."""
  out: Conditioning = {}
  for part in parts:
    for stack, places in (part or {}).items():
      for place, entries in places.items():
        for entry, value in entries.items():
          have = out.get(stack, {}).get(place, {}).get(entry)
          if have is None:
            add(out, stack, place, entry, value)
          elif entry == "prefix":
            def join(a, b):
              batch = max(a.shape[1], b.shape[1])
              shape = lambda x: (x.shape[0], batch) + x.shape[2:]  # noqa: E731
              return jnp.concatenate([jnp.broadcast_to(a, shape(a)),
                                      jnp.broadcast_to(b, shape(b))], axis=2)
            add(out, stack, place, entry, tuple(join(a, b) for a, b in zip(have, value)))
          else:
            add(out, stack, place, entry, jax.tree.map(jnp.multiply, have, value))
  return out


@registry.configurable
class CombinedPrompt(base.PromptModule):
  """An input prompt and per-layer methods at once (e.g. a soft prompt with IA3).

  Attributes:
    prompt: the module that edits the input sequence (a SoftPrompt, ...), or
      None; its parameters are under `encoder_prompt/prompt/`.
    per_layer: modules with `layer_conditioning` (DeepPrompt, IA3,
      HyperPrompt), under `encoder_prompt/per_layer_<i>/`; their
      conditioning is merged (prefixes joined, scales multiplied).
  The model spec fills in the parts' `model_config` (`base.for_model`).
  """
  prompt: Optional[nn.Module] = None
  per_layer: Sequence[nn.Module] = ()

  @property
  def num_positions(self) -> int:
    return base.num_positions(self.prompt)

  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **features):
    for part in self.per_layer:
      if not hasattr(part, "layer_conditioning"):
        raise ValueError(f"CombinedPrompt.per_layer holds {type(part).__name__}, which has no "
                         "layer_conditioning; put an input prompt in CombinedPrompt.prompt")
      part(embedded_BLH, tokens_BL, mask_BL, deterministic=deterministic, **features)
    if self.prompt is None:
      return embedded_BLH, mask_BL
    return self.prompt(embedded_BLH, tokens_BL, mask_BL, deterministic=deterministic,
                       **features)

  def layer_conditioning(self, batch_size: int, deterministic: bool = True, **features
                         ) -> Conditioning:
    parts = [*self.per_layer]
    if hasattr(self.prompt, "layer_conditioning"):
      parts.append(self.prompt)
    return merge([p.layer_conditioning(batch_size, deterministic=deterministic, **features)
                  for p in parts])


class PerLayerPrompt(base.PromptModule):
  """Base of modules that only condition layers: the input passes unchanged.

  Subclasses make their parameters in `setup` (so that both the seam call
  and `layer_conditioning` see them) and define `layer_conditioning`.
  """
  num_positions = 0

  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **features) -> tuple[Array, Array]:
    return embedded_BLH, mask_BL

  def layer_conditioning(self, batch_size: int, deterministic: bool = True,
                         **features) -> Conditioning:
    raise NotImplementedError

