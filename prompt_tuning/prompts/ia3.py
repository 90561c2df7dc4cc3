"""IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better
and Cheaper than In-Context Learning", T-Few, section 3.3): learned vectors
that rescale the attention keys and values and the MLP's intermediate
activation of every layer,

    softmax(Q (l_k ⊙ K)^T / sqrt(d_k)) (l_v ⊙ V)      and      (l_ff ⊙ γ(W_1 x)) W_2,

with l_k, l_v in R^{d_k} (here N * D, all heads) and l_ff in R^{d_ff}, in
every self-attention, cross-attention and MLP of both stacks (as T-Few
applies it to T0). T5 has no 1/sqrt(d_k) at run time (it is folded into the
query init) and its gated MLP's γ(W_1 x) is gelu(x W_i0) * (x W_i1): l_ff
multiplies that product.

The vectors start at ones, so an untrained IA3 is exactly the plain model.
They reach the layers through the model's per-layer conditioning (see
prompt_tuning.prompts.per_layer), so scanned layers and cached decoding
work; they multiply the keys and values before those are cached. To train
IA3 with a soft prompt, use `CombinedPrompt(prompt=SoftPrompt(...),
per_layer=[IA3()])`.

Shape key: N heads, D head width, F MLP width.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from prompt_tuning import registry
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.prompts import per_layer

Array = jax.Array

# (stack, place in layer) -> parameter name prefix.
_ATTENTIONS = (("encoder", "self_attention"), ("decoder", "self_attention"),
               ("decoder", "cross_attention"))


@registry.configurable
class IA3(per_layer.PerLayerPrompt):
  """Rescaling vectors l_k, l_v [layers, N * D] per attention and l_ff [layers, F].

  Parameters: `<stack>_<place>_key`, `<stack>_<place>_value` (places
  `self_attention`, and `cross_attention` in the decoder) and `<stack>_mlp`.

  Attributes:
    model_config: the backbone's config; the model spec fills it in.
  """
  model_config: Optional[T5Config] = None

  def setup(self):
    cfg = per_layer.require_config(self)
    width = cfg.num_heads * cfg.head_dim
    vectors = {}
    for stack, place in _ATTENTIONS:
      layers = per_layer.stack_layers(cfg, stack)
      what = f"[{stack} layers={layers}, heads*head_dim={width}]"
      vectors[f"{stack}/{place}"] = tuple(
          per_layer.layer_param(self, f"{stack}_{place}_{part}", (layers, width),
                                ("layers", "joined_kv"), nn.initializers.ones, what)
          for part in ("key", "value"))
    for stack in ("encoder", "decoder"):
      layers = per_layer.stack_layers(cfg, stack)
      vectors[f"{stack}/mlp"] = per_layer.layer_param(
          self, f"{stack}_mlp", (layers, cfg.mlp_dim), ("layers", "mlp"), nn.initializers.ones,
          f"[{stack} layers={layers}, mlp_dim={cfg.mlp_dim}]")
    self.vectors = vectors

  def layer_conditioning(self, batch_size: int, deterministic: bool = True, **features):
    out: per_layer.Conditioning = {}
    for where, value in self.vectors.items():
      per_layer.add(out, *where.split("/"), "scale", value)
    return out
