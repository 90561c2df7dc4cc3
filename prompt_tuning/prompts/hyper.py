"""HyperPrompt-Global (He et al. 2022, "HyperPrompt: Prompt-based Task-Conditioning
of Transformers", sections 3.1-3.3).

Every layer m of a stack has a global prompt P_m [l, H], shared by all tasks.
Task tau's hyper-prompts for that layer are made from it by a small local
network whose weights a global hypernetwork writes:

    layer-aware task embedding   I_tau^m = h_t([k_tau; z_m])
                                       = W_2 ReLU(W_1 [k_tau; z_m] + b_1) + b_2
    local network weights        D^K_{tau,m} = W^{D^K} I_tau^m   [H, b]
                                 U^K_{tau,m} = W^{U^K} I_tau^m   [b, N*D]
    hyper-prompts                P^K_{tau,m} = ReLU(P_m D^K_{tau,m}) U^K_{tau,m}
                                 (and likewise P^V with W^{D^V}, W^{U^V})

k_tau is the task embedding, z_m the layer embedding (its own table per
stack), h_t the shared two-layer MLP, W^{D^K}, W^{U^K}, W^{D^V}, W^{U^V} the
global hypernetworks shared by all tasks and layers, b the bottleneck. The
hyper-prompts, split into N heads, are prepended to the keys and values of
every self-attention of the encoder and the decoder (section 3.1: K' =
[P^K; K], V' = [P^V; V], no position bias), through the model's per-layer
conditioning, the same path as deep prompts (prompts/deep.py): scanned
layers and cached decoding work.

Departures: the paper fine-tunes the whole model with the hyper-prompts
("train everything"); this project's default keeps the backbone frozen
(PROMPT_TUNING_RULES, only `encoder_prompt/...` trains) and
configs/prompts/hyperprompt.gin has TRAIN_BACKBONE for the paper's setting.
The global prompts are one per layer, shared by tasks (the task enters only
through I_tau^m), and the projection out of the bottleneck goes to the
attention width N * D, which for T5 1.1 differs from the model width H.

Shape key: B batch, T tasks, l prompt length, H model width, N heads, D head
width, b bottleneck, t' task/layer embedding size, t layer-aware embedding size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import registry
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.prompts import per_layer
from prompt_tuning.prompts.base import per_example_index, take_rows

Array = jax.Array
STACKS = ("encoder", "decoder")


@registry.configurable
class HyperPrompt(per_layer.PerLayerPrompt):
  """HyperPrompt-Global: per-task, per-layer key/value prompts from global ones.

  Attributes:
    num_tasks: T; examples carry `task_index` in [0, T).
    length: l, hyper-prompt positions per layer.
    bottleneck: b, the width of the generated local networks.
    task_dim: t', the size of the task and layer embeddings.
    embedding_dim: t, the size of the layer-aware task embedding I.
    hidden_dim: the hidden width of h_t.
    stacks: the self-attentions that get hyper-prompts ("encoder", "decoder").
    model_config: the backbone's config; the model spec fills it in.
  """
  num_tasks: int
  length: int = 8
  bottleneck: int = 16
  task_dim: int = 32
  embedding_dim: int = 32
  hidden_dim: int = 64
  stacks: Sequence[str] = STACKS
  index_feature: str = "task_index"
  model_config: Optional[T5Config] = None

  def setup(self):
    cfg = per_layer.require_config(self)
    stacks = tuple(self.stacks)
    if not stacks or set(stacks) - set(STACKS) or len(set(stacks)) != len(stacks):
      raise ValueError(f"HyperPrompt.stacks={stacks}; expected a non-empty set of {STACKS}")
    h, nd, b = cfg.emb_dim, cfg.num_heads * cfg.head_dim, self.bottleneck
    tp, t, hid = self.task_dim, self.embedding_dim, self.hidden_dim

    def param(name, shape, axes, init, what=""):
      return per_layer.layer_param(self, name, shape, axes, init, what)

    normal = nn.initializers.normal
    self.task_embedding = param("task_embedding", (self.num_tasks, tp), ("tasks", "task_dim"),
                                normal(1.0), f"[tasks={self.num_tasks}, task_dim={tp}]")
    prompts, layer_embeddings = {}, {}
    for stack in stacks:
      layers = per_layer.stack_layers(cfg, stack)
      prompts[stack] = param(f"{stack}_global_prompts", (layers, self.length, h),
                             ("layers", "prompt", "prompt_embed"), normal(1.0),
                             f"[{stack} layers={layers}, l={self.length}, width={h}]")
      layer_embeddings[stack] = param(f"{stack}_layer_embedding", (layers, tp),
                                      ("layers", "task_dim"), normal(1.0),
                                      f"[{stack} layers={layers}, task_dim={tp}]")
    self.global_prompts, self.layer_embeddings = prompts, layer_embeddings
    lecun = nn.initializers.lecun_normal()
    zeros = nn.initializers.zeros
    self.h_t = (param("task_mlp_in", (2 * tp, hid), ("hyper_in", "hyper_hidden"), lecun),
                param("task_mlp_in_bias", (hid,), ("hyper_hidden",), zeros),
                param("task_mlp_out", (hid, t), ("hyper_hidden", "task_dim"), lecun),
                param("task_mlp_out_bias", (t,), ("task_dim",), zeros))
    # Scaled so that D, U and the hyper-prompts start at about unit variance.
    self.generators = {
        part: (param(f"{part}_down_generator", (t, h, b), ("task_dim", "embed", "rank"),
                     normal(1.0 / np.sqrt(t * h)), f"[t={t}, width={h}, b={b}]"),
               param(f"{part}_up_generator", (t, b, nd), ("task_dim", "rank", "joined_kv"),
                     normal(1.0 / np.sqrt(t * b)), f"[t={t}, b={b}, heads*head_dim={nd}]"))
        for part in ("key", "value")}

  def layer_aware_task_embedding(self, task_BK: Array, layer_MK: Array) -> Array:
    """I [M, B, t] = h_t([k_tau; z_m]) for every (layer, example) pair."""
    m, b = layer_MK.shape[0], task_BK.shape[0]
    z = jnp.concatenate([jnp.broadcast_to(task_BK[None], (m, b, task_BK.shape[-1])),
                         jnp.broadcast_to(layer_MK[:, None], (m, b, layer_MK.shape[-1]))],
                        axis=-1)
    w1, b1, w2, b2 = self.h_t
    hidden = jax.nn.relu(z @ w1 + b1[None, None])
    return hidden @ w2 + b2[None, None]

  def hyper_prompts(self, stack: str, index_B: Array) -> tuple[Array, Array]:
    """(P^K, P^V) [layers, B, l, N, D] for the tasks `index_B`."""
    cfg = self.model_config
    emb_MBT = self.layer_aware_task_embedding(take_rows(self.task_embedding, index_B),
                                              self.layer_embeddings[stack])
    prompts_MLH = self.global_prompts[stack]
    out = []
    for part in ("key", "value"):
      w_down, w_up = self.generators[part]
      down_MBHR = jnp.einsum("mbt,thr->mbhr", emb_MBT, w_down)
      up_MBRK = jnp.einsum("mbt,trk->mbrk", emb_MBT, w_up)
      hidden = jax.nn.relu(jnp.einsum("mlh,mbhr->mblr", prompts_MLH, down_MBHR))
      p_MBLK = jnp.einsum("mblr,mbrk->mblk", hidden, up_MBRK)
      out.append(p_MBLK.reshape(p_MBLK.shape[:3] + (cfg.num_heads, cfg.head_dim)))
    return out[0], out[1]

  def layer_conditioning(self, batch_size: int, deterministic: bool = True, **features):
    index_B = per_example_index(features, self.index_feature, "HyperPrompt", self, batch_size)
    out: per_layer.Conditioning = {}
    for stack in self.stacks:
      per_layer.add(out, stack, "self_attention", "prefix", self.hyper_prompts(stack, index_B))
    return out
