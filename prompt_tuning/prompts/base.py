"""The contract every prompt module keeps, and the helpers they share.

A prompt module plugs into the T5 seam (`T5(config, encoder_prompt=M)`):

    M(embedded [B, L, H], tokens [B, L], mask [B, L], deterministic=..., **features)
      -> (sequence [B, L', H], mask [B, L'])                  or
      -> (sequence, mask, {"self_attention_mask": [B, L', L']})

A module that conditions every layer (deep prompts, IA3, HyperPrompt) also
defines `layer_conditioning(batch_size, deterministic=..., **features)`
(see prompt_tuning.prompts.per_layer); the model calls it for both stacks.

and says how many positions it adds to the sequence, `num_positions`, so that
budgets are checked without running it. Parameters are made with `param`
(logical axis names always), per-example rows with `per_example_index` and
`take_rows`, and prompts joined to the input with `join_prompt`. Modules that
need the backbone's sizes declare a `model_config` field left None; the model
spec fills it (`for_model`), so gin binds the model config once.

What an initializer starts from (the backbone's embedding table, the task's
vocabulary) is an argument: the setup puts an `InitContext` on every prompt
module (`with_init_context`) and `param` hands it to each initializer that
takes one (a keyword-only `context` parameter). A model without one (the
abstract setup phase, `jax.eval_shape` of its init) hands none.

Shape key: B batch, L input length, P prompt length, H model width, N rows
of a table (tasks or prompts).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
COMBINE_MODES = ("prefix", "after_first", "suffix")

# The parameters of prompt modules: everything under `encoder_prompt/` or
# `decoder_prompt/`. The freezing rules, the checkpoint export and the
# backbone loader all use this one pattern.
PROMPT_PARAM_PATTERN = r"(encoder|decoder)_prompt/.*"
PROMPT_PARAM = re.compile(r"(^|.*/)" + PROMPT_PARAM_PATTERN)


@dataclasses.dataclass(frozen=True, eq=False)
class InitContext:
  """What prompt initializers may start from, handed over by the model's setup.

  `runtime.setup.materialize` builds one from the arrays it has just read and
  puts it on the prompt modules; the initializers that take a `context`
  (prompts.initializers: sampled vocabulary, class labels, a string) use it.
  Compared and hashed by identity (it holds a table), so a module holding
  one stays hashable.

  Attributes:
    embeddings: the backbone's embedding table [V, H] (a host array), or None
      when the model has no checkpoint.
    vocabulary: the task's input vocabulary (anything with
      `encode(str) -> ids`), for initializers that embed text; or None.
    checkpoint: the backbone's checkpoint path (named in errors and
      provenance checks), or None.
    config: the backbone's T5Config (with `embeddings`, its provenance
      fingerprint), or None.
  """
  embeddings: Any = None
  vocabulary: Any = None
  checkpoint: Optional[str] = None
  config: Any = None


class PromptModule(nn.Module):
  """Base of the prompt modules: the fields they share, keyword-only.

  Attributes:
    combine: where a prompt joins the input ("prefix", "after_first" or
      "suffix", see `join_prompt`); per-layer prompts ignore it.
    dtype: the prompt parameters' dtype (kept float32 when the backbone is
      stored in bfloat16).
    init_context: what the initializers may start from (`InitContext`); the
      setup fills it when it initializes parameters (`with_init_context`).
  Subclasses define `num_positions` and `__call__` (see the module docstring).
  """
  _: dataclasses.KW_ONLY
  combine: str = "prefix"
  dtype: Any = jnp.float32
  init_context: Optional[InitContext] = None


def num_positions(module: Optional[nn.Module]) -> int:
  """Positions `module` adds to the encoder sequence (0 for none)."""
  if module is None:
    return 0
  if not hasattr(module, "num_positions"):
    raise TypeError(f"{type(module).__name__} does not declare num_positions; every prompt "
                    "module must (see prompt_tuning.prompts.base)")
  return int(module.num_positions)


def _rebuild(module: Optional[nn.Module], own_changes: Callable[[nn.Module], dict]
             ) -> Optional[nn.Module]:
  """`module` cloned with `own_changes(m)` applied to it and to every module it
  holds (a combined or masked prompt's parts), innermost first."""
  if module is None:
    return None
  changes = {}
  for field in dataclasses.fields(module):
    if field.name in ("parent", "name"):
      continue
    value = getattr(module, field.name, None)
    if isinstance(value, nn.Module):
      changes[field.name] = _rebuild(value, own_changes)
    elif isinstance(value, (tuple, list)) and value and all(
        isinstance(v, nn.Module) for v in value):
      changes[field.name] = tuple(_rebuild(v, own_changes) for v in value)
  changes.update(own_changes(module))
  return module.clone(**changes) if changes else module


def for_model(module: Optional[nn.Module], model_config: Any) -> Optional[nn.Module]:
  """`module` with its `model_config` field filled in, if it has one left unset,
  and so for the modules it holds (a combined or masked prompt's parts)."""
  return _rebuild(module, lambda m: {"model_config": model_config}
                  if getattr(m, "model_config", False) is None else {})


def with_init_context(module: Optional[nn.Module], context: Optional[InitContext]
                      ) -> Optional[nn.Module]:
  """`module`, and the prompt modules it holds, with `init_context` set to `context`."""
  return _rebuild(module, lambda m: {"init_context": context}
                  if isinstance(m, PromptModule) else {})


def takes_context(init: Callable[..., Array]) -> bool:
  """Whether an initializer takes the init context (a keyword-only `context`)."""
  try:
    parameter = inspect.signature(init).parameters.get("context")
  except (TypeError, ValueError):  # Not introspectable: a plain initializer.
    return False
  return parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY


def call_init(init: Callable[..., Array], rng: Array, shape: Sequence[int], dtype: Any,
              context: Optional[InitContext]) -> Array:
  """`init(rng, shape, dtype)`, handing `context` on to an initializer that takes it."""
  if context is not None and takes_context(init):
    return init(rng, shape, dtype, context=context)
  return init(rng, shape, dtype)


def param(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str],
          init: Callable[..., Array], dtype: Any = jnp.float32) -> Array:
  """A parameter with logical axis names (one per dimension).

  Flax checks an existing parameter's shape during `apply` by tracing its
  initializer; outside `init` the initializer is therefore replaced by zeros
  of the shape, so initializers that read data (an embedding table, a file)
  run only when a parameter is really initialized. An initializer that takes
  a `context` gets the module's `init_context`.
  """
  if len(axes) != len(shape):
    raise ValueError(f"{name}: {len(axes)} axis names {tuple(axes)} for shape {tuple(shape)}")

  def init_or_shape(rng, shape, dtype=jnp.float32):
    if not module.is_initializing():
      return jnp.zeros(shape, dtype)
    return call_init(init, rng, shape, dtype, getattr(module, "init_context", None))
  return module.param(name, nn.with_logical_partitioning(init_or_shape, tuple(axes)),
                      tuple(shape), dtype)


def join_prompt(prompt_BPH: Array, embedded_BLH: Array, mask_BL: Array, combine: str
                ) -> tuple[Array, Array]:
  """Inserts a per-example prompt into the embedded input; returns (x [B, P+L, H], mask).

  `prefix` puts the prompt first; `after_first` after the first input token;
  `suffix` just before each row's last real token (its EOS). Prompt positions
  are always visible; padding stays at the end of each row.
  """
  b, p = prompt_BPH.shape[:2]
  ones = jnp.ones((b, p), mask_BL.dtype)
  prompt_BPH = prompt_BPH.astype(embedded_BLH.dtype)
  if combine == "prefix":
    return (jnp.concatenate([prompt_BPH, embedded_BLH], axis=1),
            jnp.concatenate([ones, mask_BL], axis=1))
  if combine == "after_first":
    return (jnp.concatenate([embedded_BLH[:, :1], prompt_BPH, embedded_BLH[:, 1:]], axis=1),
            jnp.concatenate([mask_BL[:, :1], ones, mask_BL[:, 1:]], axis=1))
  if combine == "suffix":
    # Rows differ in length, so gather by position: before the insert point
    # s come input[t], then prompt[t - s], then input[t - P].
    s = jnp.maximum(jnp.sum(mask_BL.astype(jnp.int32), axis=1) - 1, 0)[:, None]  # EOS index
    t = jnp.arange(embedded_BLH.shape[1] + p)[None, :]
    in_prompt = (t >= s) & (t < s + p)
    src = jnp.clip(jnp.where(t < s, t, t - p), 0, embedded_BLH.shape[1] - 1)
    from_input = jnp.take_along_axis(embedded_BLH, src[:, :, None], axis=1)
    from_prompt = jnp.take_along_axis(prompt_BPH, jnp.clip(t - s, 0, p - 1)[:, :, None], axis=1)
    x = jnp.where(in_prompt[:, :, None], from_prompt, from_input)
    mask = jnp.where(in_prompt, True, jnp.take_along_axis(mask_BL, src, axis=1))
    return x, mask.astype(mask_BL.dtype)
  raise ValueError(f"Unknown prompt combine mode {combine!r}; expected one of {COMBINE_MODES}")


def per_example_index(features: Mapping[str, Array], name: str, owner: str,
                      module: Optional[nn.Module] = None, batch_size: int = 0) -> Array:
  """The int32 [B] index feature; zeros while `module` is initializing (shapes only)."""
  if name not in features and module is not None and module.is_initializing():
    return jnp.zeros((batch_size,), jnp.int32)
  if name not in features:
    raise ValueError(f"{owner} needs the per-example feature {name!r} (an int32 [B]); the "
                     f"batch has {sorted(features)}. Use a task_index_ task or mixture, or "
                     "pass prompt_features.")
  index = jnp.asarray(features[name]).astype(jnp.int32)
  if index.ndim != 1:
    raise ValueError(f"{owner}: feature {name!r} must be [B], got shape {index.shape}")
  return index


def take_rows(table: Array, index_B: Array) -> Array:
  """table[index] per example; NaN rows for an index outside the table."""
  return jnp.take(table, index_B, axis=0, mode="fill", fill_value=jnp.nan)


def stacked(init: Callable[..., Array]) -> Callable[..., Array]:
  """An initializer for [N, P, H] that calls a [P, H] initializer once per row,
  each with its own key (and the same context)."""
  def init_fn(rng, shape, dtype=jnp.float32, *, context: Optional[InitContext] = None):
    rngs = jax.random.split(rng, shape[0])
    return jnp.stack([call_init(init, r, tuple(shape[1:]), dtype, context) for r in rngs])
  return init_fn
