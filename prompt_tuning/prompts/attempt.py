"""ATTEMPT (Asai et al. 2022): an input-dependent mixture of frozen source prompts.

Asai, Salehi, Peters, Hajishirzi, "ATTEMPT: Parameter-Efficient Multi-task
Tuning via Attentional Mixtures of Soft Prompts", EMNLP 2022, section 3.2
(input-prompt attention). Source prompts [S, P, H] come from `.npy` files and
never train. A target prompt [P, H] (one per task in multi-task training) and
one attention sub-network G do:

  x     = max-pool over the input's real positions of the embedded input  [B, H]
  h     = LN(W_up SiLU(W_down x))           (G; W_down: H -> r, W_up: r -> H) [B, H]
  score = max-pool(prompt_j) . h / T  for every source j and the target    [B, S+1]
  a     = softmax(score)
  prompt(x) = target + sum_j a_j prompt_j  (over sources and target)       [B, P, H]

Settings as published (and as in the authors' released configs):
- T = d * e, d the model width and e Euler's number exp(1): the paper's
  temperature, which keeps the attention from becoming too sparse
  (T5-base, d = 768: T = 2087.6, the released configs' 2087).
- r = 100, the bottleneck of W_down / W_up (neither has a bias); LN is a
  standard layer norm with scale and bias.
- The target prompt starts as the embeddings of tokens sampled among the
  5,000 most frequent (sampled vocabulary), drawn with the run's seed.
- Multi-task training (`num_tasks=T`): W_down, W_up and LN are shared by
  every task; each task has its own target prompt, chosen per example by the
  batch's `task_index` feature (as prompts.multi_task does).

Departures, and why: the input is max-pooled over real tokens only (the
authors' code pads every input to the maximum length and pools over the pad
embeddings too, which makes the pooled vector depend on the padding); a row
with no real token pools to zeros. The authors' optional pretraining of G on
the source tasks is not done here: G starts from its initializers.

`TEMPERATURES` names the temperatures issue 35 compares (d * e, sqrt(d), 1) and
`attention_entropy` says how far the weights are from uniform (log(S+1)) or
one-hot (0); benchmarks/research/transfer.py reports both.

The attention scores prompts through their pooled contents, not per-source
weights, so sources can be added or removed without retraining.
Shape key: B batch, L input length, P prompt length, H model width (d),
S sources, R bottleneck, T tasks.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import registry
from prompt_tuning.models import layers
from prompt_tuning.prompts import base
from prompt_tuning.prompts.base import join_prompt, per_example_index, stacked, take_rows

Array = jax.Array
PAPER_BOTTLENECK = 100  # r in the paper and the authors' code


@functools.lru_cache(maxsize=32)
def load_source_prompts(files: tuple[str, ...]) -> np.ndarray:
  """[S, P, H] float32 from S `.npy` files, each [P, H] and all of one shape."""
  from prompt_tuning.prompts.initializers import load_npy
  if not files:
    raise ValueError("ATTEMPT needs at least one source prompt file")
  prompts = []
  for f in files:
    p = np.asarray(load_npy(f), np.float32)
    if p.ndim != 2:
      raise ValueError(f"Source prompt {f} has shape {p.shape}; expected [P, H]")
    if prompts and p.shape != prompts[0].shape:
      raise ValueError(f"Source prompt {f} has shape {p.shape} but {files[0]} has "
                       f"{prompts[0].shape}; all sources must share one [P, H]")
    prompts.append(p)
  return np.stack(prompts)


def max_pool(x_BLH: Array, mask_BL: Array) -> Array:
  """[B, H]: the maximum over each row's real positions (zeros for a row with none)."""
  pooled = jnp.max(jnp.where(mask_BL[:, :, None], x_BLH, -jnp.inf), axis=1)
  return jnp.where(jnp.any(mask_BL, axis=1)[:, None], pooled, 0.0)


def paper_temperature(width: int) -> float:
  """The paper's softmax temperature T = d * e for model width d."""
  return float(width) * math.e


# The temperatures issue 35 compares, by name -> T for model width d: the paper's
# d * e; sqrt(d), the usual scale of a dot product of d-wide vectors; and 1 (none).
# `AttemptPrompt.temperature` stays a number (None: the paper's); these names
# serve experiments and command lines that pick one.
TEMPERATURES: dict[str, Callable[[int], float]] = {
    "d*e": paper_temperature,
    "sqrt(d)": lambda width: math.sqrt(float(width)),
    "1": lambda width: 1.0,
}


def temperature_of(name: str, width: int) -> float:
  """The temperature `name` ("d*e", "sqrt(d)" or "1") means at model width `width`."""
  if name not in TEMPERATURES:
    raise ValueError(f"Unknown ATTEMPT temperature {name!r}; expected one of "
                     f"{tuple(TEMPERATURES)}")
  return TEMPERATURES[name](width)


def attention_entropy(weights_BC: Array) -> Array:
  """The mean over the batch of the attention's entropy in nats, -sum_c a_c log a_c.

  `weights_BC` are `AttemptPrompt.attention`'s mixture weights [B, S+1]. The
  entropy is log(S+1) for uniform weights (the attention ignores the input,
  the risk of a large temperature) and 0 for one-hot ones (one prompt chosen
  outright, the paper's "too sparse"); 0 log 0 counts as 0.
  """
  w = jnp.asarray(weights_BC, jnp.float32)
  terms = jnp.where(w > 0, -w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0)
  return jnp.mean(jnp.sum(terms, axis=-1))


@registry.configurable
class AttemptPrompt(base.PromptModule):
  """Attributes:
    source_files: `.npy` source prompts (frozen), each [P, H].
    temperature: the softmax temperature T; None (default) is the paper's
      d * e (d the model width, e = exp(1)).
    bottleneck: r, the size W_down projects to (the paper's 100).
    embeddings: the table the target prompt's tokens are sampled from: None
      (default) for the backbone's, which the setup hands the module (its
      `init_context`); or another (a checkpoint path, `.npy` file or [V, H]
      array).
    first_n: sample the target's tokens among the first N ids (5,000).
    init: an explicit initializer for the target prompt ([P, H] per task),
      instead of sampled vocabulary.
    num_tasks: None for one target task; T for multi-task training with T
      target prompts and one shared attention module.
    index_feature: the batch feature holding each example's task index.
  """
  source_files: Sequence[str]
  temperature: Optional[float] = None
  bottleneck: int = PAPER_BOTTLENECK
  embeddings: Any = None
  first_n: Optional[int] = 5000
  init: Optional[Callable[..., Array]] = None
  num_tasks: Optional[int] = None
  index_feature: str = "task_index"

  @property
  def num_positions(self) -> int:
    return int(load_source_prompts(tuple(self.source_files)).shape[1])

  def _target_init(self) -> Callable[..., Array]:
    if self.init is not None:
      return self.init
    from prompt_tuning.prompts import initializers
    return initializers.sampled_vocab(embeddings=self.embeddings, first_n=self.first_n)

  def setup(self):
    if self.num_tasks is not None and self.num_tasks < 1:
      raise ValueError(f"AttemptPrompt.num_tasks={self.num_tasks}; expected None (one task) "
                       "or the number of tasks")
    if self.bottleneck < 1:
      raise ValueError(f"AttemptPrompt.bottleneck={self.bottleneck}; expected at least 1")
    _, p, h = load_source_prompts(tuple(self.source_files)).shape
    init = self._target_init()
    if self.num_tasks:
      self.target = base.param(self, "target", (self.num_tasks, p, h),
                               ("tasks", "prompt", "prompt_embed"), stacked(init), self.dtype)
    else:
      self.target = base.param(self, "target", (p, h), ("prompt", "prompt_embed"), init,
                               self.dtype)
    self.down = layers.Dense(self.bottleneck, ("prompt_embed", "attention_bottleneck"),
                             kernel_init=nn.initializers.lecun_normal())
    self.up = layers.Dense(h, ("attention_bottleneck", "prompt_embed"),
                           kernel_init=nn.initializers.lecun_normal())
    self.layer_norm = nn.LayerNorm()

  def _targets(self, batch: int, features: dict) -> Array:
    """The target prompt of each example [B, P, H]."""
    target = self.target.astype(jnp.float32)
    if not self.num_tasks:
      return jnp.broadcast_to(target[None], (batch,) + target.shape)
    index_B = per_example_index(features, self.index_feature, "AttemptPrompt", self, batch)
    return take_rows(target, index_B)

  def attention(self, embedded_BLH: Array, mask_BL: Array, **features
                ) -> tuple[Array, Array, Array]:
    """(mixture weights [B, S+1] over sources then target, sources [S, P, H], targets [B, P, H])."""
    sources_SPH = jnp.asarray(load_source_prompts(tuple(self.source_files)))
    h = embedded_BLH.shape[-1]
    if h != sources_SPH.shape[-1]:
      raise ValueError(f"Source prompts are {sources_SPH.shape[1]}x{sources_SPH.shape[2]} but "
                       f"the model width is {h}")
    temperature = paper_temperature(h) if self.temperature is None else self.temperature
    if not temperature > 0:
      raise ValueError(f"AttemptPrompt.temperature={self.temperature}; expected > 0 or None "
                       "(the paper's d * e)")
    targets_BPH = self._targets(embedded_BLH.shape[0], features)
    x_BH = max_pool(embedded_BLH.astype(jnp.float32), mask_BL)
    h_BH = self.layer_norm(self.up(jax.nn.silu(self.down(x_BH))))
    # Keys: each prompt max-pooled over its positions.
    scores_BS = h_BH @ jnp.max(sources_SPH, axis=1).T
    scores_B1 = jnp.sum(h_BH * jnp.max(targets_BPH, axis=1), axis=-1, keepdims=True)
    weights_BC = jax.nn.softmax(jnp.concatenate([scores_BS, scores_B1], -1) / temperature,
                                axis=-1)
    return weights_BC, sources_SPH, targets_BPH

  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **features) -> tuple[Array, Array]:
    weights_BC, sources_SPH, targets_BPH = self.attention(embedded_BLH, mask_BL, **features)
    s = sources_SPH.shape[0]
    mixture_BPH = (jnp.einsum("bs,sph->bph", weights_BC[:, :s], sources_SPH)
                   + weights_BC[:, s:, None] * targets_BPH)
    return join_prompt(targets_BPH + mixture_BPH, embedded_BLH, mask_BL, self.combine)
