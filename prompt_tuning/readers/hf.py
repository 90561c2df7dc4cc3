"""Reads Hugging Face T5 folders (config.json + safetensors) into T5X names.

Only safetensors are read (single file or a sharded index); `.bin` pickles
are refused. Files are opened with the format's own reader,
`safetensors.safe_open(..., framework="numpy")`: opening checks the header
(offsets, shapes, dtypes) and maps the file, and each tensor is read on its
own, so reading the embedding table alone touches nothing else.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors needs)
import numpy as np
import safetensors

from prompt_tuning.models.t5 import T5Config
from prompt_tuning import trees as tree_lib
from prompt_tuning.readers.errors import DamagedBackboneError, first_line

SUPPORTED_MODEL_TYPES = ("t5", "mt5", "umt5")
# Safetensors dtypes numpy can hold (the 8-bit and smaller floats it cannot).
_NUMPY_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")


class SafetensorsFile:
  """One safetensors file, opened lazily: tensors are read one at a time."""

  def __init__(self, path: str,
               expected: str = "a whole safetensors file (its header's offsets cover its data)"):
    self.path = path
    self._dir = os.path.dirname(path)
    if not os.path.isfile(path):
      raise DamagedBackboneError(self._dir, f"its data file {path} is missing", expected)
    try:
      self._file = safetensors.safe_open(path, framework="numpy")
      dtypes = {name: self._file.get_slice(name).get_dtype() for name in self._file.keys()}
    except (safetensors.SafetensorError, OSError) as e:
      raise DamagedBackboneError(self._dir, f"Corrupt safetensors file {path}: {first_line(e)}",
                                 expected) from e
    for name, dtype in sorted(dtypes.items()):
      if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}; expected one "
                         f"of {', '.join(_NUMPY_DTYPES)}")

  def keys(self) -> list[str]:
    return sorted(self._file.keys())

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._file.get_slice(name).get_shape())

  def read(self, name: str) -> np.ndarray:
    # A copy: the tensor must not keep the mapped file alive or change with it.
    try:
      return np.array(self._file.get_tensor(name), copy=True)
    except Exception as e:  # pylint: disable=broad-except  (safetensors' and the OS's types)
      raise DamagedBackboneError(self._dir, f"reading {self.path} failed: {first_line(e)}",
                                 f"tensor {name} whole, as its header says", name) from e


def check_architecture(hf_config: Mapping[str, Any], source: str) -> None:
  """Raises unless the config describes a T5-family encoder-decoder."""
  model_type = hf_config.get("model_type")
  archs = hf_config.get("architectures") or []
  if model_type not in SUPPORTED_MODEL_TYPES or any(
      not re.match(r"^(T5|MT5|UMT5)(ForConditionalGeneration|Model|EncoderModel)$", a)
      for a in archs):
    raise ValueError(f"{source}: unsupported architecture (model_type={model_type!r}, "
                     f"architectures={archs}); expected model_type in {SUPPORTED_MODEL_TYPES} "
                     "with a T5ForConditionalGeneration-style architecture")


def config_from_hf(hf_config: Mapping[str, Any], source: str = "config.json",
                   distinct_head: Optional[bool] = None, **overrides) -> T5Config:
  """Builds the T5Config of a Hugging Face T5 / mT5 / umT5 config.json.

  Args:
    distinct_head: whether the weights hold an `lm_head.weight` that differs
      from the embedding. Used only when the config cannot say: transformers 5
      writes `tie_word_embeddings: true` for every T5-family model, and only
      T5 (not umT5) also records `scale_decoder_outputs`.
  """
  check_architecture(hf_config, source)
  model_type = hf_config["model_type"]
  proj = hf_config.get("feed_forward_proj", "relu")
  gated = proj.startswith("gated-")
  act = proj.split("-")[-1]
  act = {"gelu": "gelu", "gelu_new": "gelu", "relu": "relu", "silu": "silu"}.get(act)
  if act is None:
    raise ValueError(f"{source}: unsupported feed_forward_proj {proj!r}; expected relu, "
                     "gated-gelu, gated-relu or gated-silu")
  if "scale_decoder_outputs" in hf_config:
    tied = hf_config["scale_decoder_outputs"]
  elif hf_config.get("tie_word_embeddings", True) and distinct_head:
    tied = False  # A separately saved head means an untied model.
  else:
    tied = hf_config.get("tie_word_embeddings", True)
  num_layers = hf_config["num_layers"]
  kwargs = dict(
      vocab_size=hf_config["vocab_size"], emb_dim=hf_config["d_model"],
      num_heads=hf_config["num_heads"], num_encoder_layers=num_layers,
      num_decoder_layers=hf_config.get("num_decoder_layers") or num_layers,
      head_dim=hf_config["d_kv"], mlp_dim=hf_config["d_ff"],
      mlp_activations=(act, "linear") if gated else (act,),
      logits_via_embedding=bool(tied),
      relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
      shared_relative_bias=model_type != "umt5",
      layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
  )
  kwargs.update(overrides)
  return T5Config(**kwargs)


def _name_map(cfg: T5Config) -> dict[str, tuple[str, bool]]:
  """HF tensor name -> (T5X name, transpose?). Linear weights [out, in] are transposed."""
  t, keep = True, False
  m: dict[str, tuple[str, bool]] = {"shared.weight": ("token_embedder/embedding", keep)}
  if not cfg.logits_via_embedding:
    m["lm_head.weight"] = ("decoder/logits_dense/kernel", t)
  mlp = (["wi"] if len(cfg.mlp_activations) == 1
         else [f"wi_{i}" for i in range(len(cfg.mlp_activations))]) + ["wo"]
  stacks = (("encoder", cfg.num_encoder_layers, [("SelfAttention", "attention")],
             ["pre_attention_layer_norm", "pre_mlp_layer_norm"]),
            ("decoder", cfg.num_decoder_layers,
             [("SelfAttention", "self_attention"), ("EncDecAttention", "encoder_decoder_attention")],
             ["pre_self_attention_layer_norm", "pre_cross_attention_layer_norm",
              "pre_mlp_layer_norm"]))
  for stack, n, attns, norms in stacks:
    m[f"{stack}.final_layer_norm.weight"] = (f"{stack}/{stack}_norm/scale", keep)
    for i in range(n):
      hf, ours = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
      for j, norm in enumerate(norms):
        m[f"{hf}.{j}.layer_norm.weight"] = (f"{ours}/{norm}/scale", keep)
      for j, (hf_attn, attn) in enumerate(attns):
        for a, b in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
          m[f"{hf}.{j}.{hf_attn}.{a}.weight"] = (f"{ours}/{attn}/{b}/kernel", t)
      for w in mlp:
        m[f"{hf}.{len(attns)}.DenseReluDense.{w}.weight"] = (f"{ours}/mlp/{w}/kernel", t)
      bias = f"{hf}.0.SelfAttention.relative_attention_bias.weight"
      if not cfg.shared_relative_bias:
        m[bias] = (f"{ours}/relpos_bias/rel_embedding", t)
      elif i == 0:
        m[bias] = (f"{stack}/relpos_bias/rel_embedding", t)
  return m


# Tensors HF keeps that T5 does not need: tied copies of the embedding.
_IGNORED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$")


class HFCheckpoint:
  """A Hugging Face T5 folder: config plus lazily read tensors in T5X names."""

  def __init__(self, path: str):
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Hugging Face checkpoint folder not found: {path}")
    self.dir = path
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
      raise FileNotFoundError(f"{path} has no config.json; a Hugging Face T5 folder needs "
                              "config.json plus model.safetensors (or a sharded index)")
    with open(config_path) as f:
      try:
        self.hf_config = json.load(f)
      except json.JSONDecodeError as e:
        raise DamagedBackboneError(path, f"Corrupt {config_path}: {e}",
                                   "a Hugging Face T5 config.json") from e
    check_architecture(self.hf_config, config_path)
    self._files = self._open_files()
    self.config = config_from_hf(self.hf_config, config_path,
                                 distinct_head=self._has_distinct_head())
    self._map = _name_map(self.config)

  def _open_files(self) -> dict[str, SafetensorsFile]:
    """HF tensor name -> the file holding it."""
    index = os.path.join(self.dir, "model.safetensors.index.json")
    single = os.path.join(self.dir, "model.safetensors")
    if os.path.isfile(index):
      try:
        with open(index) as f:
          weight_map = dict(json.load(f)["weight_map"])
      except (ValueError, KeyError, TypeError) as e:
        raise DamagedBackboneError(self.dir, f"its index {index} is unreadable "
                                   f"({type(e).__name__}: {first_line(e)})",
                                   "JSON with a weight_map of tensor names to files") from e
      shards = sorted(set(weight_map.values()))
      opened = {}
      for fn in shards:
        count = sum(v == fn for v in weight_map.values())
        opened[fn] = SafetensorsFile(os.path.join(self.dir, fn), expected=(
            f"shard {fn} of the {len(shards)} that model.safetensors.index.json lists "
            f"({count} tensors)"))
      return {name: opened[fn] for name, fn in weight_map.items()}
    if os.path.isfile(single):
      st = SafetensorsFile(single)
      return {name: st for name in st.keys()}
    found = sorted(os.listdir(self.dir))
    if any(f.endswith(".bin") for f in found):
      raise FileNotFoundError(f"{self.dir} has no model.safetensors or "
                              "model.safetensors.index.json (.bin pickles are never loaded; "
                              f"convert them to safetensors); found {found}")
    raise DamagedBackboneError(self.dir, f"its weights file {single} is missing (found "
                               f"{found})", "config.json plus model.safetensors, or "
                               "model.safetensors.index.json and the shards it lists")

  def _has_distinct_head(self) -> bool:
    if "lm_head.weight" not in self._files or "scale_decoder_outputs" in self.hf_config:
      return False
    if "shared.weight" not in self._files:
      return True
    head = self._files["lm_head.weight"].read("lm_head.weight")
    return not np.array_equal(head, self._files["shared.weight"].read("shared.weight"))

  def _t5x_to_hf(self) -> dict[str, str]:
    return {ours: hf for hf, (ours, _) in self._map.items() if hf in self._files}

  def names(self) -> list[str]:
    """T5X names of the tensors present, plus HF names that map to nothing."""
    mapped = [self._map[hf][0] for hf in self._files if hf in self._map]
    extra = [hf for hf in self._files if hf not in self._map and not _IGNORED.match(hf)]
    return sorted(mapped + extra)

  def shapes(self) -> dict[str, tuple[int, ...]]:
    out = {}
    for hf, st in self._files.items():
      if hf in self._map:
        shape = st.shape(hf)
        ours, transpose = self._map[hf]
        out[ours] = shape[::-1] if transpose else shape
      elif not _IGNORED.match(hf):
        out[hf] = st.shape(hf)
    return out

  def read(self, name: str) -> np.ndarray:
    """One parameter by T5X name (e.g. 'token_embedder/embedding')."""
    hf = self._t5x_to_hf().get(name)
    if hf is None:
      raise KeyError(f"{self.dir} has no tensor for parameter {name}")
    value = self._files[hf].read(hf)
    return np.ascontiguousarray(value.T if self._map[hf][1] else value)

  def read_many(self, names: list[str]) -> dict[str, np.ndarray]:
    return {n: self.read(n) for n in names}


def load_params(path: str, expected: Optional[Mapping[str, Any]] = None,
                allow_missing: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """Reads an HF folder into a flat {T5X name: array} dict, checked against `expected`."""
  ckpt = HFCheckpoint(path)
  shapes = {k: tree_lib.ShapeOnly(s) for k, s in ckpt.shapes().items()}
  if expected is None:
    expected = {ours: shapes[ours] for ours in ckpt._t5x_to_hf()}
  tree_lib.check_against(shapes, expected, ckpt.dir, allow_missing)
  return ckpt.read_many([k for k in expected if k in shapes])

