"""Deep prompts / prefix tuning: learned keys and values prepended in every layer.

Prefix tuning (Li & Liang 2021) and deep prompt tuning (P-Tuning v2, Liu et
al. 2022) give every layer's attention P extra key/value positions that all
queries see, with no position bias:

    head_i = Attention(x W_q, [P_k; x W_k], [P_v; x W_v])

chosen per attention kind: encoder self-attention ("encoder_self"), decoder
self-attention ("decoder_self") and cross-attention ("cross"). The
prefixes reach the layers through the model's per-layer conditioning (see
prompt_tuning.prompts.per_layer), so scanned layers and KV-cached decoding
work unchanged: the decoder asks for them at every decoding step and joins
them after the cache.

Optionally (`reparameterize=True`), as in Li & Liang's section 4.3, the
prefixes are produced during training by a small MLP from a smaller matrix,

    [P_k; P_v] = MLP(P') = tanh(P' W_1 + b_1) W_2 + b_2,

which steadies training. The MLP is a function of parameters only, so at
export it is folded away (`fold_reparameterized`): the exported .npy files
are the plain per-layer prefixes, `<kind>_key` / `<kind>_value`
[layers, P, N, D], exactly what a `DeepPrompt(reparameterize=False)` holds
(and reads back with `init_dir`).

Shape key: P prefix length, N heads, D head width, H model width, R the
reparameterization's hidden width, E the width of its input P'.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import registry
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.prompts import initializers, per_layer
from prompt_tuning.prompts.base import InitContext
from prompt_tuning.prompts.per_layer import ATTENTION_KINDS

Array = jax.Array
_REPARAM = ("reparam_input", "reparam_hidden", "reparam_hidden_bias", "reparam_out_key",
            "reparam_out_key_bias", "reparam_out_value", "reparam_out_value_bias")


def reparameterized_prefix(reparam_input, reparam_hidden, reparam_hidden_bias,
                           reparam_out_key, reparam_out_key_bias, reparam_out_value,
                           reparam_out_value_bias) -> tuple[Array, Array]:
  """Li & Liang's MLP: P' [P, E] -> keys, values [layers, P, N, D]."""
  h_PR = jnp.tanh(reparam_input @ reparam_hidden + reparam_hidden_bias[None])

  def out(kernel_RLND, bias_LND):
    return jnp.einsum("pr,rlnd->lpnd", h_PR, kernel_RLND) + bias_LND[:, None]
  return out(reparam_out_key, reparam_out_key_bias), out(reparam_out_value,
                                                         reparam_out_value_bias)


def fold_reparameterized(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Replaces every reparameterized deep prompt in a flat parameter dict by its
  plain prefixes (`<stem>key`, `<stem>value`); other entries pass unchanged."""
  out = dict(flat)
  for name in flat:
    if not name.endswith("_reparam_input"):
      continue
    stem = name[:-len("reparam_input")]
    missing = [stem + part for part in _REPARAM if stem + part not in flat]
    if missing:
      raise ValueError(f"Reparameterized deep prompt {stem!r} lacks {missing}")
    args = [jnp.asarray(out.pop(stem + part), jnp.float32) for part in _REPARAM]
    k, v = jax.jit(reparameterized_prefix)(*args)
    out[stem + "key"], out[stem + "value"] = np.asarray(k), np.asarray(v)
  return out


def _from_dir(directory: str, name: str):
  """An initializer reading the one exported file `*.<name>.npy` in `directory`
  (when it really runs: not while only shapes are traced)."""
  def init(rng, shape, dtype=jnp.float32, *, context: Optional[InitContext] = None):
    if initializers.tracing_shape(rng, context):
      return initializers.stand_in(shape, dtype, f"DeepPrompt.init_dir={directory!r}")
    found = sorted(glob.glob(os.path.join(directory, f"*.{name}.npy")))
    if len(found) != 1:
      raise ValueError(f"DeepPrompt.init_dir={directory!r}: expected one file *.{name}.npy, "
                       f"found {len(found)} {found}")
    value = np.load(found[0], allow_pickle=False)
    if value.shape != tuple(shape):
      raise ValueError(f"{found[0]} has shape {value.shape}, but this model needs "
                       f"{tuple(shape)} [layers, prefix length, heads, head dim]")
    return jnp.asarray(value, dtype)
  return init


@registry.configurable
class DeepPrompt(per_layer.PerLayerPrompt):
  """Per-layer key/value prefixes (prefix tuning, deep prompt tuning).

  Attributes:
    length: P, prefix positions per layer and attention.
    attentions: which attentions get prefixes: any of "encoder_self",
      "decoder_self", "cross".
    reparameterize: produce the prefixes by Li & Liang's MLP during
      training (folded into plain prefixes at export).
    reparam_dim: E, the width of the MLP's input P' (0: the model width).
    reparam_hidden: R, the MLP's hidden width.
    init_stddev: standard deviation of the plain prefixes' normal init.
    init_dir: a folder of exported prompt files (`prompts/step_N`) to start
      the plain prefixes from.
    model_config: the backbone's config; the model spec fills it in.
  """
  length: int = 10
  attentions: Sequence[str] = tuple(ATTENTION_KINDS)
  reparameterize: bool = False
  reparam_dim: int = 0
  reparam_hidden: int = 512
  init_stddev: float = 0.1
  init_dir: Optional[str] = None
  model_config: Optional[T5Config] = None

  def setup(self):
    cfg = per_layer.require_config(self)
    kinds = tuple(self.attentions)
    unknown = [k for k in kinds if k not in ATTENTION_KINDS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
      raise ValueError(f"DeepPrompt.attentions={kinds}; expected a non-empty set of "
                       f"{tuple(ATTENTION_KINDS)}")
    if self.length < 1:
      raise ValueError(f"DeepPrompt.length={self.length}; expected >= 1")
    if self.reparameterize and self.init_dir:
      raise ValueError("DeepPrompt.init_dir holds plain prefixes; it cannot start a "
                       "reparameterized DeepPrompt (set reparameterize=False)")
    p, n, d = self.length, cfg.num_heads, cfg.head_dim
    tables = {}
    for kind in kinds:
      stack = ATTENTION_KINDS[kind][0]
      layers = per_layer.stack_layers(cfg, stack)
      what = f"[{stack} layers={layers}, P={p}, heads={n}, head_dim={d}]"

      def param(name, shape, axes, init):
        return per_layer.layer_param(self, f"{kind}_{name}", shape, axes, init, what)  # noqa: B023
      if not self.reparameterize:
        def init(part):
          if self.init_dir:
            return _from_dir(self.init_dir, f"{kind}_{part}")  # noqa: B023
          return nn.initializers.normal(self.init_stddev)
        tables[kind] = tuple(param(part, (layers, p, n, d), ("layers", "prompt", "heads", "kv"),
                                   init(part)) for part in ("key", "value"))
        continue
      e, r = self.reparam_dim or cfg.emb_dim, self.reparam_hidden
      tables[kind] = (
          param("reparam_input", (p, e), ("prompt", "prompt_embed"), nn.initializers.normal(1.0)),
          param("reparam_hidden", (e, r), ("prompt_embed", "hyper_hidden"),
                nn.initializers.lecun_normal()),
          param("reparam_hidden_bias", (r,), ("hyper_hidden",), nn.initializers.zeros),
          param("reparam_out_key", (r, layers, n, d), ("hyper_hidden", "layers", "heads", "kv"),
                nn.initializers.normal(self.init_stddev / np.sqrt(r))),
          param("reparam_out_key_bias", (layers, n, d), ("layers", "heads", "kv"),
                nn.initializers.zeros),
          param("reparam_out_value", (r, layers, n, d), ("hyper_hidden", "layers", "heads", "kv"),
                nn.initializers.normal(self.init_stddev / np.sqrt(r))),
          param("reparam_out_value_bias", (layers, n, d), ("layers", "heads", "kv"),
                nn.initializers.zeros))
    self.tables = tables

  def prefixes(self) -> dict[str, tuple[Array, Array]]:
    """{kind: (keys, values) [layers, P, N, D]}, through the MLP when reparameterized."""
    if not self.reparameterize:
      return dict(self.tables)
    return {kind: reparameterized_prefix(*params) for kind, params in self.tables.items()}

  def layer_conditioning(self, batch_size: int, deterministic: bool = True, **features):
    out: per_layer.Conditioning = {}
    for kind, (k, v) in self.prefixes().items():
      stack, place = ATTENTION_KINDS[kind]
      # One prefix for the whole batch: [layers, 1, P, N, D], broadcast in attention.
      per_layer.add(out, stack, place, "prefix", (k[:, None], v[:, None]))
    return out
