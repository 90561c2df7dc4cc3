"""Parameter trees of a model: abstract shapes, logical axes, scan stacking."""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import trees as tree_lib


def _dummy_inputs(batch: int = 1, enc_len: int = 1, dec_len: int = 1):
  return (jnp.ones((batch, enc_len), jnp.int32), jnp.ones((batch, dec_len), jnp.int32))


def init_variables(model: nn.Module, rng: jax.Array, batch: int = 1, enc_len: int = 1,
                   dec_len: int = 1, **kwargs) -> dict[str, Any]:
  """model.init on dummy token batches; returns boxed (logically annotated) variables."""
  enc, dec = _dummy_inputs(batch, enc_len, dec_len)
  return model.init(rng, enc, dec, dec, **kwargs)


def _traced_abstract_params(model: nn.Module, kwargs: tuple[tuple[str, Any], ...]
                            ) -> tuple[Any, Any]:
  boxed = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), **dict(kwargs)))
  return nn.unbox(boxed["params"]), nn.get_partition_spec(boxed["params"])


_ABSTRACT_PARAMS = tree_lib.SharedCache(maxsize=32)


def abstract_params(model: nn.Module, **kwargs) -> tuple[Any, Any]:
  """(ShapeDtypeStruct tree, logical PartitionSpec tree) without allocating anything.

  Nothing is computed, so nothing needs reading: a model's prompt modules
  hold no init context until the setup initializes them, and without one the
  initializers that read (from a table or a file) return stand-ins of their
  shape (see prompt_tuning.prompts.initializers).

  Tracing a model's init is the slow part of setting it up, and one setup asks
  for the shapes more than once (the setup, then the checkpoint reader), so
  the trees are kept per model (linen modules hash and compare by their
  fields; a module with an unhashable field is traced every time). Callers
  get their own copy of the containers.
  """
  key = tuple(sorted(kwargs.items()))
  shapes, specs = _ABSTRACT_PARAMS.get((model, key),
                                       lambda: _traced_abstract_params(model, key))
  copy = lambda tree: jax.tree.map(lambda x: x, tree)  # noqa: E731
  return copy(shapes), copy(specs)


def init_params(model: nn.Module, rng: jax.Array, **kwargs) -> Any:
  """Randomly initialized, unboxed parameters."""
  return nn.unbox(init_variables(model, rng, **kwargs)["params"])


def param_count(tree: Any) -> int:
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


_LAYER = re.compile(r"^(encoder|decoder)/layers_(\d+)/(.*)$")


def stack_layers(flat: Mapping[str, Any], num_layers: Mapping[str, int]) -> dict[str, Any]:
  """Unrolled names (`encoder/layers_3/...`) -> scanned (`encoder/layers/layer/...`).

  The layers' arrays are stacked on a new leading axis, in layer order.
  """
  out: dict[str, Any] = {}
  groups: dict[str, dict[int, Any]] = {}
  for name, value in flat.items():
    m = _LAYER.match(name)
    if m is None:
      out[name] = value
    else:
      groups.setdefault(f"{m[1]}/layers/layer/{m[3]}", {})[int(m[2])] = value
  for name, by_index in groups.items():
    stack = name.split("/")[0]
    want = list(range(num_layers[stack]))
    if sorted(by_index) != want:
      raise ValueError(f"Cannot stack {name}: found layers {sorted(by_index)}, expected {want}")
    out[name] = np.stack([np.asarray(by_index[i]) for i in want])
  return out


def unstack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `stack_layers`."""
  out: dict[str, Any] = {}
  for name, value in flat.items():
    m = re.match(r"^(encoder|decoder)/layers/layer/(.*)$", name)
    if m is None:
      out[name] = value
    else:
      for i in range(value.shape[0]):
        # Shape-only stand-ins (ShapeDtypeStruct) cannot be indexed.
        item = (value[i] if hasattr(value, "__getitem__")
                else tree_lib.ShapeOnly(value.shape[1:]))
        out[f"{m[1]}/layers_{i}/{m[2]}"] = item
  return out

