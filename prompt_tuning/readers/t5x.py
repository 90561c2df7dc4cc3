"""Reads T5X checkpoints without T5X: msgpack + zarr, inline msgpack, and Orbax.

Layouts understood (each a `checkpoint_N` folder):
  * msgpack + tensorstore (T5X's classic format): a `checkpoint` msgpack file
    whose small arrays are inline and whose large ones are tensorstore specs
    pointing at zarr folders `target.<dotted.path>` beside it;
  * inline msgpack (older T5X): the same file with every array inline;
  * Orbax PyTree (newer T5X): `_METADATA` / `manifest.ocdbt` in the folder or
    in one item sub-folder.
  * this project's own training checkpoints (`MODEL_DIR`, its `checkpoints/`
    folder, or one `checkpoints/<step>` folder): the `trainable` item of a
    full-training run, so a backbone trained here loads like any other.
Parameters are the `target` subtree (`optimizer/target` in the oldest files).
Nothing is unpickled: msgpack carries raw bytes, zarr and Orbax arrays are
read by tensorstore.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Optional

import msgpack
import numpy as np

from prompt_tuning import layout
from prompt_tuning import trees as tree_lib

_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA")
# Flax's msgpack extension codes.
_EXT_NDARRAY = 1
_EXT_NATIVE_COMPLEX = 2
_EXT_NPSCALAR = 3


class _InlineArray:
  """An array stored inside the msgpack file."""

  def __init__(self, shape, dtype, buffer):
    self.shape, self.dtype, self._buffer = tuple(shape), np.dtype(dtype), buffer

  def read(self) -> np.ndarray:
    return np.frombuffer(self._buffer, dtype=self.dtype).reshape(self.shape).copy()


class _TensorStoreArray:
  """An array in a tensorstore (zarr) folder next to the msgpack file."""

  def __init__(self, spec: Mapping[str, Any], ckpt_dir: str, name: str):
    self.spec = _localize_spec(spec, ckpt_dir)
    self.name = name
    meta = spec.get("metadata", {})
    self.shape = tuple(meta["shape"]) if "shape" in meta else None
    self.dtype = meta.get("dtype")

  def read(self) -> np.ndarray:
    import tensorstore as ts  # Imported lazily: heavy, and only needed here.
    try:
      return np.asarray(ts.open(self.spec).result().read().result())
    except Exception as e:  # tensorstore raises ValueError or its own types.
      raise ValueError(f"Cannot read T5X array {self.name} from {self.spec['kvstore']['path']}: "
                       f"{e}") from e


def _localize_spec(spec: Mapping[str, Any], ckpt_dir: str) -> dict[str, Any]:
  """Points every kvstore of a saved spec at the folder beside the msgpack file.

  T5X writes paths relative to the checkpoint folder (or absolute ones of
  where it was written, e.g. gs://); the array folder's name is what counts.
  """
  spec = copy.deepcopy(dict(spec))
  if "base" in spec:  # A cast or other adapter driver wrapping the store.
    spec["base"] = _localize_spec(spec["base"], ckpt_dir)
    return spec
  kvstore = spec.get("kvstore")
  rel = kvstore.get("path") if isinstance(kvstore, dict) else kvstore
  rel = rel or spec.get("path")
  if not rel:
    raise ValueError(f"T5X tensorstore spec without a path: {spec}")
  name = os.path.basename(str(rel).rstrip("/"))
  spec.pop("path", None)
  spec["kvstore"] = {"driver": "file", "path": os.path.join(ckpt_dir, name)}
  # The metadata is validated against the stored .zarray; drop what may have
  # been written differently (e.g. chunking) and keep the rest implicit.
  spec.pop("metadata", None)
  return spec


def _ext_hook(code: int, data: bytes):
  if code == _EXT_NDARRAY:
    shape, dtype, buffer = msgpack.unpackb(data)
    return _InlineArray(shape, dtype, buffer)
  if code == _EXT_NPSCALAR:
    dtype, buffer = msgpack.unpackb(data)
    return _InlineArray((), dtype, buffer)
  if code == _EXT_NATIVE_COMPLEX:
    real, imag = msgpack.unpackb(data)
    return complex(real, imag)
  return msgpack.ExtType(code, data)


def _is_ts_spec(node: Any) -> bool:
  return isinstance(node, Mapping) and "driver" in node and (
      "kvstore" in node or "base" in node or "path" in node)


def find_checkpoint_dir(path: str) -> str:
  """Accepts `checkpoint_N/`, `checkpoint_N/checkpoint`, or a model dir (latest step)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"T5X checkpoint not found: {path} (expected a checkpoint_N "
                            "folder holding a 'checkpoint' msgpack file or an Orbax checkpoint)")
  if os.path.isfile(path):
    return os.path.dirname(os.path.abspath(path))
  entries = os.listdir(path)
  if "checkpoint" in entries or any(m in entries for m in _ORBAX_MARKERS):
    return os.path.abspath(path)
  if "trainable" in entries and os.path.isdir(os.path.join(path, "trainable")):
    return os.path.abspath(path)  # One step of this project's CheckpointStore.
  steps = sorted((int(e.split("_")[1]), e) for e in entries
                 if e.startswith("checkpoint_") and e.split("_")[1].isdigit())
  if steps:
    return os.path.abspath(os.path.join(path, steps[-1][1]))
  if os.path.isdir(layout.checkpoints_dir(path)):  # A MODEL_DIR written by our trainer.
    return find_checkpoint_dir(layout.checkpoints_dir(path))
  own_steps = sorted(int(e) for e in entries
                     if e.isdigit() and os.path.isdir(os.path.join(path, e, "trainable")))
  if own_steps:
    return os.path.abspath(os.path.join(path, str(own_steps[-1])))
  item_dirs = [e for e in entries if os.path.isdir(os.path.join(path, e)) and any(
      os.path.exists(os.path.join(path, e, m)) for m in _ORBAX_MARKERS)]
  if item_dirs:
    return os.path.abspath(path)
  raise FileNotFoundError(f"No T5X checkpoint in {path}: expected a 'checkpoint' msgpack file, "
                          f"an Orbax checkpoint, or checkpoint_N folders; found {sorted(entries)}")


def _params_subtree(state: Mapping[str, Any], source: str) -> Mapping[str, Any]:
  if "optimizer" in state and "target" in state["optimizer"]:
    return state["optimizer"]["target"]
  if "target" in state:
    return state["target"]
  if "params" in state:
    return state["params"]
  raise ValueError(f"{source} holds no parameters: expected a 'target' (T5X) subtree, "
                   f"found keys {sorted(state)}")


class T5XCheckpoint:
  """Lazy access to the parameters of one T5X checkpoint, by '/'-joined name."""

  def __init__(self, path: str):
    self.dir = find_checkpoint_dir(path)
    msgpack_file = os.path.join(self.dir, "checkpoint")
    if os.path.isfile(msgpack_file):
      self.format = "msgpack"
      self._arrays, self.step = self._open_msgpack(msgpack_file)
    else:
      self.format = "orbax"
      self._arrays, self.step = self._open_orbax()

  def _open_msgpack(self, path: str):
    try:
      with open(path, "rb") as f:
        state = msgpack.unpackb(f.read(), ext_hook=_ext_hook, raw=False,
                                strict_map_key=False)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException,
            TypeError) as e:
      raise ValueError(f"Corrupt T5X checkpoint file {path}: not a valid msgpack state "
                       f"({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping):
      raise ValueError(f"Corrupt T5X checkpoint file {path}: top level is "
                       f"{type(state).__name__}, expected a state dict")
    params = _params_subtree(state, path)
    arrays: dict[str, Any] = {}
    self._collect(params, "", arrays)
    step_node = (state.get("optimizer", {}).get("state", {}).get("step")
                 if "optimizer" in state else state.get("state", {}).get("step"))
    step = int(step_node.read()) if isinstance(step_node, _InlineArray) else step_node
    return arrays, step

  def _collect(self, node: Any, prefix: str, out: dict[str, Any]) -> None:
    if _is_ts_spec(node):
      out[prefix] = _TensorStoreArray(node, self.dir, prefix)
    elif isinstance(node, Mapping):
      for k, v in node.items():
        self._collect(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(node, _InlineArray):
      out[prefix] = node
    elif node is not None:
      out[prefix] = _InlineArray((), np.asarray(node).dtype, np.asarray(node).tobytes())

  def _open_orbax(self):
    import orbax.checkpoint as ocp  # Lazy: only this layout needs it.
    item_dir = self.dir
    self._own = os.path.isdir(os.path.join(item_dir, "trainable"))
    if self._own:
      item_dir = os.path.join(item_dir, "trainable")
    elif not any(os.path.exists(os.path.join(item_dir, m)) for m in ("_METADATA", "manifest.ocdbt")):
      subdirs = [e for e in sorted(os.listdir(item_dir))
                 if os.path.exists(os.path.join(item_dir, e, "_METADATA"))]
      if not subdirs:
        raise ValueError(f"{self.dir} is not an Orbax PyTree checkpoint (no _METADATA)")
      item_dir = os.path.join(item_dir, subdirs[0])
    self._orbax_dir = item_dir
    self._checkpointer = ocp.PyTreeCheckpointer()
    try:
      meta = self._checkpointer.metadata(item_dir)
    except Exception as e:
      raise ValueError(f"Corrupt Orbax checkpoint {item_dir}: {e}") from e
    meta_tree = getattr(meta, "item_metadata", meta)
    meta_tree = getattr(meta_tree, "tree", meta_tree)
    self._orbax_tree = meta_tree
    if self._own:  # The trainable item is the parameter tree itself.
      return tree_lib.flatten(meta_tree), int(os.path.basename(self.dir))
    params = _params_subtree(meta_tree, item_dir)
    arrays = tree_lib.flatten(params)
    step = meta_tree.get("state", {}).get("step") if isinstance(meta_tree, Mapping) else None
    return arrays, (None if step is None else self._read_orbax_paths(["state/step"])["state/step"])

  def _read_orbax_paths(self, full_paths: list[str]) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp
    wanted = tree_lib.unflatten({p: 0 for p in full_paths})
    restore_args = tree_lib.unflatten({p: ocp.RestoreArgs(restore_type=np.ndarray)
                                       for p in full_paths})
    restored = self._checkpointer.restore(
        self._orbax_dir, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                                      partial_restore=True))
    flat = tree_lib.flatten(restored)
    return {p: np.asarray(flat[p]) for p in full_paths}

  def _orbax_prefix(self) -> str:
    if self._own:
      return ""
    tree = self._orbax_tree
    if "optimizer" in tree:
      return "optimizer/target/"
    return "target/" if "target" in tree else "params/"

  # Public API.

  def names(self) -> list[str]:
    return sorted(self._arrays)

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in self._arrays.items() if v.shape is not None}

  def read(self, name: str) -> np.ndarray:
    """One parameter by name (e.g. 'token_embedder/embedding'); reads nothing else."""
    return self.read_many([name])[name]

  def read_many(self, names: list[str]) -> dict[str, np.ndarray]:
    unknown = [n for n in names if n not in self._arrays]
    if unknown:
      raise KeyError(f"{self.dir} has no parameter(s) {unknown}; it holds {len(self._arrays)} "
                     f"parameters such as {self.names()[:5]}")
    if self.format == "orbax":
      prefix = self._orbax_prefix()
      got = self._read_orbax_paths([prefix + n for n in names])
      return {n: got[prefix + n] for n in names}
    return {n: self._arrays[n].read() for n in names}

  def read_all(self) -> dict[str, np.ndarray]:
    return self.read_many(self.names())


def load_params(path: str, expected: Optional[Mapping[str, Any]] = None,
                allow_missing: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """Reads a T5X checkpoint into a flat {name: array} dict.

  Args:
    path: a checkpoint_N folder, its `checkpoint` file, or a model dir.
    expected: flat {name: shape-bearing} of the model; when given, the
      checkpoint must match it exactly (one error lists every difference).
    allow_missing: expected names the checkpoint may lack.
  """
  ckpt = T5XCheckpoint(path)
  if expected is not None:
    shapes = {k: tree_lib.ShapeOnly(s) for k, s in ckpt.shapes().items()}
    tree_lib.check_against(shapes, expected, ckpt.dir, allow_missing)
    return ckpt.read_many([k for k in expected if k in shapes])
  return ckpt.read_all()

