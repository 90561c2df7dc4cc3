"""The T5X reader on checkpoints written by T5X itself (../shared/fixtures)."""

import gzip
import itertools
import json
import os
import shutil

import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from prompt_tuning import readers
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.readers import t5x
from prompt_tuning import trees as tree_lib
from tests.conftest import INLINE_T5X_CONFIG, TINY_T5X_CONFIG, fixture_path


def _independent_zarr_read(folder):
  """Decodes a zarr v2 gzip array by hand (no tensorstore), for cross-checking."""
  meta = json.load(open(os.path.join(folder, ".zarray")))
  assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C"
  shape, chunks = meta["shape"], meta["chunks"]
  out = np.zeros(shape, np.dtype(meta["dtype"]))
  grid = [range((s + c - 1) // c) for s, c in zip(shape, chunks)]
  for idx in itertools.product(*grid):
    raw = gzip.decompress(open(os.path.join(folder, ".".join(map(str, idx))), "rb").read())
    block = np.frombuffer(raw, np.dtype(meta["dtype"])).reshape(chunks)
    sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
    out[sl] = block[tuple(slice(0, x.stop - x.start) for x in sl)]
  return out


def _independent_msgpack_target(path):
  def hook(code, data):
    assert code == 1
    shape, dtype, buf = msgpack.unpackb(data)
    return np.frombuffer(buf, np.dtype(dtype)).reshape(shape)
  state = msgpack.unpackb(open(path, "rb").read(), ext_hook=hook, strict_map_key=False)
  return tree_lib.flatten(state["optimizer"]["target"])


def test_tiny_checkpoint_every_array_bit_equal():
  ckpt_dir = fixture_path("t5x_tiny_checkpoint", "checkpoint_3")
  ckpt = t5x.T5XCheckpoint(ckpt_dir)
  assert ckpt.format == "msgpack" and ckpt.step == 3
  ours = ckpt.read_all()
  reference = {}
  for name, node in _independent_msgpack_target(os.path.join(ckpt_dir, "checkpoint")).items():
    if name.endswith("/kvstore/path"):
      param = name[:-len("/kvstore/path")]
      reference[param] = _independent_zarr_read(os.path.join(ckpt_dir, node))
    elif isinstance(node, np.ndarray):
      reference[name] = node
  assert len(reference) == 52 and set(ours) == set(reference)
  for name in reference:
    assert ours[name].dtype == reference[name].dtype, name
    assert ours[name].tobytes() == reference[name].tobytes(), name
  emb = np.load(fixture_path("tiny_embeddings_32128x4.npy"))
  assert ours["token_embedder/embedding"].tobytes() == emb.tobytes()


def test_inline_checkpoint_bit_equal():
  ckpt_dir = fixture_path("t5x_inline_checkpoint", "checkpoint_0")
  ours = t5x.T5XCheckpoint(ckpt_dir).read_all()
  reference = _independent_msgpack_target(os.path.join(ckpt_dir, "checkpoint"))
  assert set(ours) == set(reference)
  for name, value in reference.items():
    assert ours[name].tobytes() == value.tobytes(), name
  assert ours["decoder/relpos_bias/rel_embedding"].shape == (4, 32)


@pytest.mark.parametrize("fixture,config", [
    ("t5x_tiny_checkpoint", TINY_T5X_CONFIG), ("t5x_inline_checkpoint", INLINE_T5X_CONFIG)])
@pytest.mark.parametrize("scan", [False, True])
def test_loads_into_model_and_runs(fixture, config, scan):
  model = T5(config.replace(scan_layers=scan))
  params = readers.load_params(fixture_path(fixture), model)  # model dir: latest step
  names = set(tree_lib.flatten(params_lib.unstack_layers(tree_lib.flatten(params))))
  assert names == set(t5x.T5XCheckpoint(fixture_path(fixture)).names())
  enc = jnp.array([[37, 1974, 47, 248, 55, 1], [37, 1, 0, 0, 0, 0]])
  dec = jnp.array([[0, 37, 1974], [0, 37, 0]])
  logits = model.apply({"params": params}, enc, dec, dec)
  assert logits.shape == (2, 3, 32128) and bool(jnp.all(jnp.isfinite(logits)))
  assert float(jnp.std(logits)) > 0


def test_scanned_and_unrolled_models_agree_on_fixture():
  path = fixture_path("t5x_tiny_checkpoint")
  enc = jnp.array([[37, 1974, 47, 248, 55, 1]])
  dec = jnp.array([[0, 37, 1974, 47]])
  outs = []
  for scan in (False, True):
    model = T5(TINY_T5X_CONFIG.replace(scan_layers=scan))
    outs.append(model.apply({"params": readers.load_params(path, model)}, enc, dec))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_reads_single_array_without_touching_others(monkeypatch):
  path = fixture_path("t5x_tiny_checkpoint", "checkpoint_3")
  opened = []
  real_read = t5x._TensorStoreArray.read
  monkeypatch.setattr(t5x._TensorStoreArray, "read",
                      lambda self: opened.append(self.name) or real_read(self))
  emb = readers.read_array(path, "token_embedder/embedding")
  assert emb.shape == (32128, 4)
  assert opened == ["token_embedder/embedding"]


def test_orbax_layout_round_trip(tmp_path):
  import orbax.checkpoint as ocp
  source = t5x.T5XCheckpoint(fixture_path("t5x_tiny_checkpoint", "checkpoint_3")).read_all()
  state = {"target": tree_lib.unflatten(source), "state": {"step": np.int32(7)}}
  ocp.PyTreeCheckpointer().save(str(tmp_path / "checkpoint_7"), state)
  ckpt = t5x.T5XCheckpoint(str(tmp_path))
  assert ckpt.format == "orbax" and int(ckpt.step) == 7
  assert ckpt.names() == sorted(source)
  emb = ckpt.read("token_embedder/embedding")
  assert emb.tobytes() == source["token_embedder/embedding"].tobytes()
  params = readers.load_params(str(tmp_path), T5(TINY_T5X_CONFIG))
  for name, value in tree_lib.flatten(params).items():
    assert value.tobytes() == source[name].tobytes(), name


def test_missing_checkpoint_folder_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    readers.load_params(str(tmp_path / "nope"), T5(TINY_T5X_CONFIG))


def test_corrupt_msgpack_is_a_clear_error(tmp_path):
  bad = tmp_path / "checkpoint_1"
  bad.mkdir()
  (bad / "checkpoint").write_bytes(b"\xc1\xc1 definitely not msgpack")
  with pytest.raises(ValueError, match="Corrupt T5X checkpoint file"):
    t5x.T5XCheckpoint(str(bad))


def test_missing_zarr_folder_names_the_array(tmp_path):
  src = fixture_path("t5x_tiny_checkpoint", "checkpoint_3")
  dst = tmp_path / "checkpoint_3"
  shutil.copytree(src, dst)
  os.chmod(dst, 0o755)
  shutil.rmtree(dst / "target.encoder.layers_1.mlp.wo.kernel")
  with pytest.raises(ValueError, match="encoder/layers_1/mlp/wo/kernel"):
    readers.load_params(str(dst), T5(TINY_T5X_CONFIG))


def test_model_mismatch_lists_every_problem():
  model = T5(TINY_T5X_CONFIG.replace(num_decoder_layers=3, mlp_dim=6))
  with pytest.raises(readers.CheckpointMismatchError) as err:
    readers.load_params(fixture_path("t5x_tiny_checkpoint"), model)
  text = str(err.value)
  assert "missing: decoder/layers_2/" in text
  assert "wrong shape" in text and "encoder/layers_0/mlp/wi_0/kernel: checkpoint (4, 8), model (4, 6)" in text


def test_allow_missing_leaves_prompt_out():
  model = T5(TINY_T5X_CONFIG)
  shapes, _ = params_lib.abstract_params(model)
  flat = tree_lib.flatten(shapes)
  flat["encoder_prompt/prompt"] = tree_lib.ShapeOnly((3, 4))
  present = {k: tree_lib.ShapeOnly(s) for k, s in
             t5x.T5XCheckpoint(fixture_path("t5x_tiny_checkpoint")).shapes().items()}
  with pytest.raises(readers.CheckpointMismatchError, match="encoder_prompt/prompt"):
    tree_lib.check_against(present, flat, "ckpt")
  tree_lib.check_against(present, flat, "ckpt", allow_missing=("encoder_prompt/prompt",))
