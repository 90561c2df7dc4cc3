"""The T5X fixture in each form a backbone comes in, and the ways each is found damaged.

`healthy(root)` writes three copies of ../shared/fixtures/t5x_tiny_checkpoint
(never touching the original): T5X msgpack + zarr (the fixture as T5X wrote
it), Orbax OCDBT (as the quickstart writes its backbones) and Hugging Face
safetensors, plus a sharded HF copy. `DAMAGES` names, for each form, a
missing data file, a truncated data file and a missing metadata file; each
entry damages a copy and returns the file it damaged.
"""

import glob
import json
import os
import shutil

import numpy as np

from tests.conftest import TINY_T5X_CONFIG, fixture_path

ZARR_ARRAY = "checkpoint_3/target.encoder.layers_0.mlp.wi_0.kernel"
OCDBT_DATA = "checkpoint_3/ocdbt.process_0/d"


def healthy(root: str) -> dict:
  """{form: folder} of undamaged copies under `root` (written once)."""
  from safetensors.numpy import save_file
  import orbax.checkpoint as ocp
  from prompt_tuning import trees as tree_lib
  from prompt_tuning.readers import hf as hf_lib
  from prompt_tuning.readers import t5x
  forms = {name: os.path.join(root, name) for name in ("zarr", "ocdbt", "hf", "hf_sharded")}
  if os.path.isdir(forms["hf_sharded"]):
    return forms
  source = fixture_path("t5x_tiny_checkpoint")
  shutil.copytree(source, forms["zarr"])
  for folder, dirs, _ in os.walk(forms["zarr"]):  # The fixture's files are read-only.
    os.chmod(folder, 0o755)
  for path in glob.glob(os.path.join(forms["zarr"], "**", "*"), recursive=True):
    os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
  arrays = t5x.T5XCheckpoint(source).read_all()
  ocp.PyTreeCheckpointer().save(os.path.join(forms["ocdbt"], "checkpoint_3"), {
      "target": tree_lib.unflatten(arrays), "state": {"step": np.int32(3)}})
  config = TINY_T5X_CONFIG
  tensors = {hf: np.ascontiguousarray(arrays[ours].T if transpose else arrays[ours])
             for hf, (ours, transpose) in hf_lib._name_map(config).items()}
  hf_config = dict(model_type="t5", architectures=["T5ForConditionalGeneration"],
                   vocab_size=config.vocab_size, d_model=config.emb_dim, d_kv=config.head_dim,
                   d_ff=config.mlp_dim, num_layers=config.num_encoder_layers,
                   num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
                   relative_attention_num_buckets=config.relative_attention_num_buckets,
                   relative_attention_max_distance=config.relative_attention_max_distance,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  for form in ("hf", "hf_sharded"):
    os.makedirs(forms[form])
    with open(os.path.join(forms[form], "config.json"), "w") as f:
      json.dump(hf_config, f)
  save_file(tensors, os.path.join(forms["hf"], "model.safetensors"))
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for fn, part in shards.items():
    save_file({n: tensors[n] for n in part}, os.path.join(forms["hf_sharded"], fn))
  with open(os.path.join(forms["hf_sharded"], "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": {n: fn for fn, part in shards.items() for n in part}}, f)
  return forms


def _remove(path: str) -> str:
  os.remove(path)
  return path


def _truncate(path: str) -> str:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return path


def _largest(pattern: str) -> str:
  return max(glob.glob(pattern), key=os.path.getsize)


# name -> (form, damage(copy) -> damaged file, words the error must hold besides that file).
DAMAGES = {
    "zarr_data_missing": ("zarr", lambda d: _remove(os.path.join(d, ZARR_ARRAY, "0.0")),
                          ["array encoder/layers_0/mlp/wi_0/kernel", "is missing",
                           "expected every chunk of a (4, 8)"]),
    "zarr_data_truncated": ("zarr", lambda d: _truncate(os.path.join(d, ZARR_ARRAY, "0.0")),
                            ["array encoder/layers_0/mlp/wi_0/kernel", "failed"]),
    "zarr_metadata_missing": ("zarr", lambda d: _remove(os.path.join(d, ZARR_ARRAY, ".zarray")),
                              ["array encoder/layers_0/mlp/wi_0/kernel", "is missing",
                               "expected the zarr metadata of a (4, 8) array"]),
    "zarr_state_missing": ("zarr", lambda d: _remove(os.path.join(d, "checkpoint_3",
                                                                  "checkpoint")),
                           ["is missing", "expected T5X's msgpack state"]),
    "ocdbt_data_missing": ("ocdbt", lambda d: _remove(_largest(os.path.join(d, OCDBT_DATA, "*"))),
                           ["is missing", "expected the array's data in it"]),
    "ocdbt_data_truncated": ("ocdbt", lambda d: _truncate(_largest(os.path.join(d, OCDBT_DATA,
                                                                                 "*"))),
                             ["is truncated", "bytes"]),
    "ocdbt_metadata_missing": ("ocdbt", lambda d: _remove(os.path.join(d, "checkpoint_3",
                                                                       "_METADATA")),
                               ["is missing", "expected Orbax's _METADATA"]),
    "ocdbt_manifest_missing": ("ocdbt", lambda d: _remove(os.path.join(d, "checkpoint_3",
                                                                       "manifest.ocdbt")),
                               ["is missing", "expected the manifest.ocdbt"]),
    "hf_data_missing": ("hf", lambda d: _remove(os.path.join(d, "model.safetensors")),
                        ["is missing", "expected config.json plus model.safetensors"]),
    "hf_data_truncated": ("hf", lambda d: _truncate(os.path.join(d, "model.safetensors")),
                          ["Corrupt safetensors file", "expected a whole safetensors file"]),
    "hf_metadata_missing": ("hf", lambda d: _remove(os.path.join(d, "config.json")),
                            ["is missing", "expected a Hugging Face T5 config.json"]),
    "hf_shard_missing": ("hf_sharded", lambda d: _remove(os.path.join(
        d, "model-00002-of-00002.safetensors")), ["is missing", "expected shard"]),
}


def damaged(forms: dict, name: str, root: str) -> tuple[str, str]:
  """(a damaged copy of the form `name` damages, the file it damaged)."""
  form, damage, _ = DAMAGES[name]
  copy = os.path.join(root, name)
  shutil.copytree(forms[form], copy)
  return copy, damage(copy)
