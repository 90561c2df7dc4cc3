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

Opening a checkpoint checks its files before any array is read (metadata,
every zarr chunk, every OCDBT data file and the byte range each value needs),
and a read that fails anyway is reported the same way: DamagedBackboneError,
one line naming the checkpoint, the file and the array.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Optional

import msgpack
import numpy as np

from prompt_tuning import layout
from prompt_tuning import trees as tree_lib
from prompt_tuning.readers.errors import DamagedBackboneError, first_line

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
    self.ckpt_dir = ckpt_dir
    meta = spec.get("metadata", {})
    self.shape = tuple(meta["shape"]) if "shape" in meta else None
    self.dtype = meta.get("dtype")

  @property
  def folder(self) -> str:
    spec = self.spec
    while "base" in spec:
      spec = spec["base"]
    return spec["kvstore"]["path"]

  def _expected(self) -> str:
    return f"the zarr folder of {_describe(self.shape, self.dtype)}"

  def check_files(self) -> None:
    """Raises DamagedBackboneError unless the zarr folder, its .zarray and every chunk exist."""
    if not os.path.isdir(self.folder):
      raise DamagedBackboneError(self.ckpt_dir, f"its folder {self.folder} is missing",
                                 self._expected(), self.name)
    check_zarr_folder(self.ckpt_dir, self.folder, self.name, self.shape)

  def read(self) -> np.ndarray:
    import tensorstore as ts  # Imported lazily: heavy, and only needed here.
    try:
      return np.asarray(ts.open(self.spec).result().read().result())
    except Exception as e:  # tensorstore raises ValueError or its own types.
      raise DamagedBackboneError(
          self.ckpt_dir, f"reading {self.folder} failed: {first_line(e)}",
          f"{self._expected()} whose chunks decompress whole", self.name) from e


def _describe(shape: Optional[Any], dtype: Optional[Any] = None) -> str:
  """'a (4, 8) <f4 array', leaving out what is unknown."""
  words = [str(tuple(shape)) if shape is not None else "", str(dtype) if dtype else ""]
  return " ".join(["a"] + [w for w in words if w] + ["array"])


def _zarr_expected(zarray: Mapping[str, Any]) -> str:
  return (f"every chunk of {_describe(zarray.get('shape'), zarray.get('dtype'))} in chunks "
          f"of {tuple(zarray.get('chunks', ()))}")


def check_zarr_folder(ckpt_dir: str, folder: str, name: str,
                      shape: Optional[tuple[int, ...]] = None) -> None:
  """Raises DamagedBackboneError unless a zarr v2 folder's metadata and chunks are all there.

  TensorStore reads a missing chunk as the fill value without a word, so a
  deleted file would load as zeros: every chunk the shape needs must exist
  (unless the array declares a fill value, which lets zarr leave chunks out).
  An uncompressed chunk must have its exact size; a compressed one at least a
  byte (a truncated compressed chunk is found when it is read).
  """
  import json
  zarray_path = os.path.join(folder, ".zarray")
  if not os.path.isfile(zarray_path):
    raise DamagedBackboneError(ckpt_dir, f"its metadata file {zarray_path} is missing",
                               f"the zarr metadata of {_describe(shape)}", name)
  try:
    with open(zarray_path) as f:
      zarray = json.load(f)
    array_shape = tuple(int(n) for n in zarray["shape"])
    chunks = tuple(int(n) for n in zarray["chunks"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DamagedBackboneError(ckpt_dir, f"its metadata file {zarray_path} is unreadable "
                               f"({first_line(e)})", "zarr v2 JSON with shape and chunks",
                               name) from e
  if zarray.get("fill_value") is not None:
    return
  grid = [-(-n // c) if c else 0 for n, c in zip(array_shape, chunks)]
  keys = [""]
  sep = zarray.get("dimension_separator", ".")
  for extent in grid:
    keys = [f"{k}{sep if k else ''}{i}" for k in keys for i in range(extent)]
  if not array_shape:
    keys = ["0"]
  raw = None
  if zarray.get("compressor") is None and "dtype" in zarray:
    raw = int(np.prod(chunks, dtype=np.int64)) * np.dtype(zarray["dtype"]).itemsize
  for n, key in enumerate(keys):
    path = os.path.join(folder, *key.split("/"))
    try:
      size = os.path.getsize(path)
    except OSError:
      raise DamagedBackboneError(ckpt_dir, f"its data file {path} is missing (chunk {n + 1} "
                                 f"of {len(keys)})", _zarr_expected(zarray),
                                 name) from None
    if size == 0 or (raw is not None and size < raw):
      raise DamagedBackboneError(ckpt_dir, f"its data file {path} is truncated ({size} bytes"
                                 f"{f' of {raw}' if raw is not None else ''})",
                                 _zarr_expected(zarray), name)


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
  weights = [e for e in entries if e.endswith((".safetensors", ".safetensors.index.json"))]
  if weights:  # A Hugging Face folder that lost its config.
    raise DamagedBackboneError(os.path.abspath(path), f"its config file "
                               f"{os.path.join(path, 'config.json')} is missing (found "
                               f"{sorted(entries)})", "a Hugging Face T5 config.json beside "
                               f"{weights[0]}")
  raise FileNotFoundError(f"No T5X checkpoint in {path}: expected a 'checkpoint' msgpack file, "
                          f"an Orbax checkpoint, or checkpoint_N folders; found {sorted(entries)}")


def _holds_ocdbt(item_dir: str) -> bool:
  """Whether an Orbax item folder is (or was) an OCDBT database."""
  return (any(os.path.exists(os.path.join(item_dir, m)) for m in ("manifest.ocdbt", "d"))
          or any(e.startswith("ocdbt.process_") for e in os.listdir(item_dir)))


def _ocdbt_file(item_dir: str, location: str) -> tuple[str, int]:
  """(file, bytes needed) of an OCDBT location '<kind>:<base>:<path>:<offset>:<length>'."""
  where, offset, length = location.split(":", 1)[1].rsplit(":", 2)
  base, _, path = where.rpartition(":")
  return os.path.join(item_dir, base + path), int(offset) + int(length)


def _ocdbt_array(key: Any) -> str:
  """The parameter a key such as b'target.encoder.layers_0.mlp.wo.kernel/0.0' belongs to."""
  key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
  name = key.split("/")[0].replace(".", "/")
  return name.split("/", 1)[1] if name.startswith(("target/", "params/")) else name


def check_ocdbt_files(ckpt_dir: str, item_dir: str) -> None:
  """Walks an OCDBT database's index (a few small reads, no array data) and checks that
  every data file a value lives in exists and holds the byte range the index names.

  Raises:
    DamagedBackboneError: naming the file, the array whose data it holds and the
      bytes expected.
  """
  import tensorstore as ts
  manifest = os.path.join(item_dir, "manifest.ocdbt")
  expected = "the manifest.ocdbt that indexes the data files under d/"
  if not os.path.isfile(manifest):
    raise DamagedBackboneError(ckpt_dir, f"its OCDBT manifest {manifest} is missing", expected)
  base = ts.KvStore.open({"driver": "file", "path": item_dir.rstrip("/") + "/"}).result()
  sizes: dict[str, Optional[int]] = {}  # Many values share one data file.

  def dump(location: Optional[str], what: str, array: Optional[str] = None) -> Any:
    if location is not None:
      path, needed = _ocdbt_file(item_dir, location)
      if path not in sizes:
        sizes[path] = os.path.getsize(path) if os.path.isfile(path) else None
      size = sizes[path]
      if size is None:
        raise DamagedBackboneError(ckpt_dir, f"its data file {path} is missing",
                                   f"{what} in it ({needed} bytes)", array)
      if size < needed:
        raise DamagedBackboneError(ckpt_dir, f"its data file {path} is truncated ({size} of "
                                   f"{needed} bytes)", f"{what} in its first {needed} bytes",
                                   array)
      if location.startswith("value:"):
        return None
    try:
      return ts.ocdbt.dump(base, location).result()
    except Exception as e:  # pylint: disable=broad-except  (TensorStore's own types)
      raise DamagedBackboneError(ckpt_dir, f"{what} of its OCDBT database {item_dir} is "
                                 f"unreadable ({first_line(e)})", expected, array) from e

  manifest_json = dump(None, "the manifest")
  versions = manifest_json.get("versions") or []
  root = versions[-1].get("root", {}).get("location") if versions else None
  pending = [root] if root else []
  while pending:
    node = dump(pending.pop(), "the index node") or {}
    for entry in node.get("entries", []):
      for value in entry.values():
        if isinstance(value, str) and value.startswith("btreenode:"):
          pending.append(value)
        elif isinstance(value, str) and value.startswith("value:"):
          dump(value, "the array's data", _ocdbt_array(entry.get("key", b"")))


def _params_subtree(state: Mapping[str, Any], source: str) -> Mapping[str, Any]:
  if "optimizer" in state and "target" in state["optimizer"]:
    return state["optimizer"]["target"]
  if "target" in state:
    return state["target"]
  if "params" in state:
    return state["params"]
  raise ValueError(f"{source} holds no parameters: expected a 'target' (T5X) subtree, "
                   f"found keys {sorted(state)}")


_MSGPACK_EXPECTED = "a msgpack state dict with a 'target' subtree of arrays (T5X's format)"


class T5XCheckpoint:
  """Lazy access to the parameters of one T5X checkpoint, by '/'-joined name."""

  def __init__(self, path: str):
    self.dir = find_checkpoint_dir(path)
    msgpack_file = os.path.join(self.dir, "checkpoint")
    if os.path.isfile(msgpack_file):
      self.format = "msgpack"
      self._arrays, self.step = self._open_msgpack(msgpack_file)
      for array in self._arrays.values():
        if isinstance(array, _TensorStoreArray):
          array.check_files()
    else:
      zarr_folders = [e for e in os.listdir(self.dir) if e.startswith("target.")
                      and os.path.isfile(os.path.join(self.dir, e, ".zarray"))]
      if zarr_folders and not any(os.path.exists(os.path.join(self.dir, m))
                                  for m in _ORBAX_MARKERS):
        raise DamagedBackboneError(
            self.dir, f"its state file {msgpack_file} is missing",
            f"T5X's msgpack state beside its {len(zarr_folders)} target.* array folders")
      self.format = "orbax"
      self._arrays, self.step = self._open_orbax()

  def _open_msgpack(self, path: str):
    try:
      with open(path, "rb") as f:
        state = msgpack.unpackb(f.read(), ext_hook=_ext_hook, raw=False,
                                strict_map_key=False)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException,
            TypeError) as e:
      raise DamagedBackboneError(
          self.dir, f"Corrupt T5X checkpoint file {path}: not a valid msgpack state "
          f"({type(e).__name__}: {first_line(e)})", _MSGPACK_EXPECTED) from e
    if not isinstance(state, Mapping):
      raise DamagedBackboneError(
          self.dir, f"Corrupt T5X checkpoint file {path}: top level is "
          f"{type(state).__name__}", _MSGPACK_EXPECTED)
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
      if subdirs:
        item_dir = os.path.join(item_dir, subdirs[0])
      elif not _holds_ocdbt(item_dir):
        raise ValueError(f"{self.dir} is not an Orbax PyTree checkpoint (no _METADATA)")
    self._orbax_dir = item_dir
    metadata_file = os.path.join(item_dir, "_METADATA")
    if not os.path.isfile(metadata_file):
      raise DamagedBackboneError(self.dir, f"its tree metadata file {metadata_file} is missing",
                                 "Orbax's _METADATA beside the arrays' data")
    # Before Orbax reads anything: its failed reads end in tracebacks from
    # its threads, and a missing file is better named than guessed at.
    if _holds_ocdbt(item_dir):
      check_ocdbt_files(self.dir, item_dir)
    self._checkpointer = ocp.PyTreeCheckpointer()
    try:
      meta = self._checkpointer.metadata(item_dir)
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedBackboneError(self.dir, f"its tree metadata {metadata_file} is unreadable "
                                 f"({first_line(e)})", "Orbax's PyTree metadata") from e
    meta_tree = getattr(meta, "item_metadata", meta)
    meta_tree = getattr(meta_tree, "tree", meta_tree)
    if not isinstance(meta_tree, Mapping):
      raise DamagedBackboneError(self.dir, f"its tree metadata {metadata_file} describes no "
                                 f"tree (Orbax read {type(meta_tree).__name__})",
                                 "Orbax's PyTree metadata")
    self._orbax_tree = meta_tree
    if self._own:  # The trainable item is the parameter tree itself.
      return tree_lib.flatten(meta_tree), int(os.path.basename(self.dir))
    params = _params_subtree(meta_tree, item_dir)
    arrays = tree_lib.flatten(params)
    step = meta_tree.get("state", {}).get("step")
    return arrays, (None if step is None else self._read_orbax_paths(["state/step"])["state/step"])

  def _read_orbax_paths(self, full_paths: list[str]) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp
    wanted = tree_lib.unflatten({p: 0 for p in full_paths})
    restore_args = tree_lib.unflatten({p: ocp.RestoreArgs(restore_type=np.ndarray)
                                       for p in full_paths})
    try:
      restored = self._checkpointer.restore(
          self._orbax_dir, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                                        partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except  (TensorStore's and Orbax's types)
      prefix = self._orbax_prefix() if hasattr(self, "_orbax_tree") else ""
      names = [p[len(prefix):] if prefix and p.startswith(prefix) else p for p in full_paths]
      raise DamagedBackboneError(
          self.dir, f"reading {self._orbax_dir} failed: {first_line(e)}",
          "every array's data intact", names[0] if len(names) == 1 else
          f"one of {len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
      ) from e
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

