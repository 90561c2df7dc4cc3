"""Pytree helpers, the ground floor: flat '/'-joined views, shapes, bytes, digests,
and the check of loaded arrays against the ones a model expects."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping

import jax
import numpy as np


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not match the parameters the model expects."""


class ShapeOnly:
  """Stands in for an array whose shape is known but whose data is not read."""

  def __init__(self, shape):
    self.shape = tuple(shape)

  def __repr__(self):
    return f"ShapeOnly({self.shape})"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(flatten(value, path))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def check_against(loaded: Mapping[str, Any], expected: Mapping[str, Any], source: str,
                  allow_missing: tuple[str, ...] = ()) -> None:
  """Raises one error listing every missing, unexpected or wrong-shaped array.

  Args:
    loaded: flat {path: array or shape-bearing object} read from a checkpoint.
    expected: flat {path: array or ShapeDtypeStruct} the model needs.
    source: the checkpoint path, named in the error.
    allow_missing: expected paths that may be absent (they are initialized
      elsewhere, e.g. a prompt that the backbone checkpoint cannot hold).
  """
  def shape(v):
    return tuple(v.shape) if hasattr(v, "shape") else tuple(np.shape(v))

  missing = sorted(k for k in expected if k not in loaded and k not in allow_missing)
  unexpected = sorted(k for k in loaded if k not in expected)
  wrong = sorted(
      f"{k}: checkpoint {shape(loaded[k])}, model {shape(expected[k])}"
      for k in expected if k in loaded and shape(loaded[k]) != shape(expected[k]))
  if not (missing or unexpected or wrong):
    return
  parts = []
  for title, items in (("missing", missing), ("unexpected", unexpected),
                       ("wrong shape", wrong)):
    if items:
      shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
      parts.append(f"{len(items)} {title}: " + ", ".join(shown))
  raise CheckpointMismatchError(f"Checkpoint {source} does not match the model: "
                                + "; ".join(parts))


def abstract(tree: Any) -> Any:
  """Shapes, dtypes and (for jax arrays) shardings: the target of a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                     sharding=getattr(x, "sharding", None)),
                      tree)


def tree_bytes(tree: Any) -> int:
  """Bytes of every leaf together (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(np.shape(x), dtype=np.int64) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def tree_digest(tree: Any) -> str:
  """SHA-256 over a tree's leaves in path order (names, dtypes, shapes and bytes)."""
  h = hashlib.sha256()
  for name, value in sorted(flatten(jax.device_get(tree)).items()):
    value = np.asarray(value)
    h.update(f"{name}|{value.dtype}|{value.shape}|".encode())
    h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()


def without_initializers(module: Any) -> Any:
  """A linen MODULE with its (and its sub-modules') initializer fields set to None.

  Applying existing parameters never calls an initializer, so two modules
  that differ only in how their parameters were initialized (a random, a
  sampled-vocabulary or a class-label prompt) compute the same function: this
  is their common key in `SharedCache`. Only a key: the result may not be
  applicable (a module may read its initializer in `setup`). Fields named
  `init` or `*_init` holding a callable count as initializers.
  """
  import flax.linen as nn
  if not isinstance(module, nn.Module):
    return module
  changes = {}
  for field in dataclasses.fields(module):
    if field.name in ("parent", "name"):
      continue
    value = getattr(module, field.name)
    if isinstance(value, nn.Module):
      stripped = without_initializers(value)
      if stripped is not value:
        changes[field.name] = stripped
    elif (field.name == "init" or field.name.endswith("_init")) and callable(value):
      changes[field.name] = None
  return module.clone(**changes) if changes else module


class SharedCache:
  """The few most recently used values by key, each made on its first request.

  For what is costly to make and the same for equal keys: jitted functions
  shared by every call on an equal model (a second run of one structure then
  neither traces nor compiles again), a model's abstract parameter shapes,
  an optimizer object. The bound keeps a process that builds many
  structures from holding every program.
  A key that cannot be hashed (an array in a module field) gets a fresh
  value that is not kept.
  """

  def __init__(self, maxsize: int):
    self._items: dict[Any, Any] = {}
    self._maxsize = maxsize

  def get(self, key: Any, make: Any) -> Any:
    try:
      hash(key)
    except TypeError:
      return make()
    value = self._items.pop(key) if key in self._items else make()
    self._items[key] = value  # most recently used last
    while len(self._items) > self._maxsize:
      self._items.pop(next(iter(self._items)))
    return value

  def values(self) -> list[Any]:
    return list(self._items.values())

  def clear(self) -> None:
    self._items.clear()
