"""Prompts chosen per example: multi-task prompts and prompt banks.

Both read an int32 index per example from the batch (by default the
`task_index` feature that the task_index_ task variants and mixtures write),
so one batch can mix tasks or prompts. Shape key: B batch, L input length,
P prompt length, H model width, T tasks, N prompts in a bank.

An index outside the table gives NaN prompts (and so a non-finite loss that
the trainer stops on) rather than silently reusing another task's prompt.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.prompts import base
from prompt_tuning.prompts.base import join_prompt, per_example_index, stacked, take_rows

Array = jax.Array
MULTI_TASK_MODES = ("add", "concat_length", "concat_features", "project")


@registry.configurable
class MultiTaskPrompt(base.PromptModule):
  """A shared prompt plus a per-task prompt, combined per example.

  Attributes:
    length: P, the shared prompt's length (and the task prompts', except
      with `concat_length`).
    num_tasks: T, rows of the task table (task_index in [0, T)).
    mode: how they combine:
      "add"              shared + task[i]                          [P, H]
      "concat_length"    [shared; task[i]] along positions         [P + task_length, H]
      "concat_features"  [shared | task[i]] along features: the shared part
                         has H - H//2 features, the task part H//2  [P, H]
      "project"          the task vector v_i generates a low-rank map of the
                         shared prompt: shared (I + A(v_i) B(v_i))   [P, H]
    task_length: the task prompts' length for "concat_length" (default P).
    task_dim, rank: the task vector's size and the map's rank ("project").
    index_feature: the batch feature holding each example's task index.
  """
  length: int
  num_tasks: int
  mode: str = "add"
  task_length: Optional[int] = None
  task_dim: int = 16
  rank: int = 4
  init: Callable[..., Array] = nn.initializers.uniform(0.5)
  index_feature: str = "task_index"

  @property
  def num_positions(self) -> int:
    return self.length + ((self.task_length or self.length) if self.mode == "concat_length"
                          else 0)

  def _param(self, name, shape, axes, init=None):
    return base.param(self, name, shape, axes, init or self.init, self.dtype)

  @nn.compact
  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **features) -> tuple[Array, Array]:
    if self.mode not in MULTI_TASK_MODES:
      raise ValueError(f"Unknown multi-task mode {self.mode!r}; expected one of "
                       f"{MULTI_TASK_MODES}")
    index_B = per_example_index(features, self.index_feature, "MultiTaskPrompt", self,
                                embedded_BLH.shape[0])
    p, h, t = self.length, embedded_BLH.shape[-1], self.num_tasks
    task_axes = ("tasks", "prompt", "prompt_embed")
    if self.mode == "add":
      shared = self._param("shared", (p, h), ("prompt", "prompt_embed"))
      tasks = self._param("tasks", (t, p, h), task_axes, stacked(self.init))
      prompt_BPH = shared[None] + take_rows(tasks, index_B)
    elif self.mode == "concat_length":
      shared = self._param("shared", (p, h), ("prompt", "prompt_embed"))
      tasks = self._param("tasks", (t, self.task_length or p, h), task_axes,
                          stacked(self.init))
      task_BPH = take_rows(tasks, index_B)
      prompt_BPH = jnp.concatenate(
          [jnp.broadcast_to(shared[None], (index_B.shape[0], p, h)), task_BPH], axis=1)
    elif self.mode == "concat_features":
      shared = self._param("shared", (p, h - h // 2), ("prompt", "prompt_embed"))
      tasks = self._param("tasks", (t, p, h // 2), task_axes, stacked(self.init))
      task_BPH = take_rows(tasks, index_B)
      prompt_BPH = jnp.concatenate(
          [jnp.broadcast_to(shared[None], task_BPH.shape[:2] + shared.shape[-1:]), task_BPH],
          axis=-1)
    else:  # project
      shared = self._param("shared", (p, h), ("prompt", "prompt_embed"))
      vectors = self._param("task_vectors", (t, self.task_dim), ("tasks", "task_dim"),
                            nn.initializers.normal(1.0))
      small = nn.initializers.normal(0.02)
      gen_a = self._param("generator_a", (self.task_dim, h, self.rank),
                          ("task_dim", "prompt_embed", "rank"), small)
      gen_b = self._param("generator_b", (self.task_dim, self.rank, h),
                          ("task_dim", "rank", "prompt_embed"), small)
      v_BK = take_rows(vectors, index_B)
      a_BHR = jnp.einsum("bk,khr->bhr", v_BK, gen_a)
      b_BRH = jnp.einsum("bk,krh->brh", v_BK, gen_b)
      prompt_BPH = shared[None] + jnp.einsum("ph,bhr,brg->bpg", shared, a_BHR, b_BRH)
    return join_prompt(prompt_BPH, embedded_BLH, mask_BL, self.combine)


@registry.configurable
class PromptBank(base.PromptModule):
  """N prompts [N, P, H]; each example uses the row its index feature names.

  Serves mixed-task batches (index = task) and prompt ensembles (N prompts
  for one task, evaluated with InferenceSpec.ensemble_prompts=N).
  """
  num_prompts: int
  length: int
  init: Callable[..., Array] = nn.initializers.uniform(0.5)
  index_feature: str = "task_index"

  @property
  def num_positions(self) -> int:
    return self.length

  @nn.compact
  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **features) -> tuple[Array, Array]:
    index_B = per_example_index(features, self.index_feature, "PromptBank", self,
                                embedded_BLH.shape[0])
    bank = base.param(self, "prompts", (self.num_prompts, self.length, embedded_BLH.shape[-1]),
                      ("prompts", "prompt", "prompt_embed"), stacked(self.init), self.dtype)
    return join_prompt(take_rows(bank, index_B), embedded_BLH, mask_BL, self.combine)
