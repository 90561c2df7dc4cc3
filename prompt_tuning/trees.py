"""Pytree helpers, the ground floor: flat '/'-joined views, shapes, bytes, digests,
and the check of loaded arrays against the ones a model expects."""

from __future__ import annotations

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
