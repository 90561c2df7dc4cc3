"""Well-kept libraries where they exist (issue 17, point 9).

The Hugging Face reader opens safetensors with `safetensors.safe_open(...,
framework="numpy")`, lazily, one tensor at a time, and still refuses pickles
and names a corrupt file in one line. Pearson and Spearman come from
scipy.stats; they are checked here against values worked out by hand.
"""

import json
import os
import struct

import numpy as np
import pytest
import safetensors
from safetensors.numpy import save_file

from prompt_tuning import readers
from prompt_tuning.cli import main as main_lib
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.readers import hf as hf_lib
from prompt_tuning.tasks import metrics

CONFIG = T5Config(vocab_size=40, emb_dim=8, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=1, head_dim=4, mlp_dim=12,
                  relative_attention_num_buckets=4, relative_attention_max_distance=8)


def _hf_folder(folder, dtype=np.float32, corrupt=None):
  """A random T5 1.1 written as an HF folder (names from the reader's own map)."""
  rng = np.random.RandomState(0)
  tensors = {}
  for hf, (ours, transpose) in hf_lib._name_map(CONFIG).items():
    del ours, transpose
    tensors[hf] = rng.normal(size=(4,)).astype(dtype)  # shapes are not checked here
  tensors["shared.weight"] = rng.normal(size=(40, 8)).astype(dtype)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "model.safetensors")
  save_file(tensors, path)
  json.dump(dict(model_type="t5", architectures=["T5ForConditionalGeneration"],
                 vocab_size=40, d_model=8, d_kv=4, d_ff=12, num_layers=1, num_heads=2,
                 relative_attention_num_buckets=4, feed_forward_proj="gated-gelu",
                 # Says the head is untied, so opening reads no tensor to find out.
                 scale_decoder_outputs=False, tie_word_embeddings=False),
            open(os.path.join(folder, "config.json"), "w"))
  return folder, tensors


def test_reader_opens_files_with_safe_open_and_reads_one_tensor(tmp_path, monkeypatch):
  folder, tensors = _hf_folder(str(tmp_path / "hf"))
  opened, read = [], []
  real_open = safetensors.safe_open

  class Spy:
    def __init__(self, path, framework, **kwargs):
      opened.append((os.path.basename(path), framework))
      self._f = real_open(path, framework=framework, **kwargs)

    def __getattr__(self, name):
      attr = getattr(self._f, name)
      if name == "get_tensor":
        return lambda key: read.append(key) or attr(key)
      return attr

  monkeypatch.setattr(safetensors, "safe_open", Spy)
  emb = readers.read_array(folder, "token_embedder/embedding")
  assert opened == [("model.safetensors", "numpy")]
  assert read == ["shared.weight"]  # lazy: nothing else was read
  np.testing.assert_array_equal(emb, tensors["shared.weight"])
  emb[0, 0] = 123.0  # The array is a copy, not a view of the mapped file.
  assert readers.read_array(folder, "token_embedder/embedding")[0, 0] != 123.0


def _header(path):
  data = open(path, "rb").read()
  n = struct.unpack("<Q", data[:8])[0]
  return json.loads(data[8:8 + n]), data[8 + n:]


def _rewrite(path, header, body):
  raw = json.dumps(header).encode()
  raw += b" " * (-len(raw) % 8)
  open(path, "wb").write(struct.pack("<Q", len(raw)) + raw + body)


def _break_offsets(path):
  header, body = _header(path)
  header["shared.weight"]["shape"] = [41, 8]  # more bytes than its offsets span
  _rewrite(path, header, body)


def _fp8(path):
  header, body = _header(path)
  entry = header["shared.weight"]
  begin, _ = entry["data_offsets"]
  entry.update(dtype="F8_E4M3", shape=[40, 4], data_offsets=[begin, begin + 160])
  # Keep the file covered: the rest of the old tensor's bytes become padding
  # tensors of the same dtype.
  header["pad.weight"] = dict(dtype="F8_E4M3", shape=[1120], data_offsets=[begin + 160,
                                                                         begin + 1280])
  _rewrite(path, header, body)


@pytest.mark.parametrize("damage,expected", [
    (lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2), "Corrupt safetensors file"),
    (lambda p: open(p, "r+b").truncate(os.path.getsize(p) - 3), "Corrupt safetensors file"),
    (lambda p: open(p, "wb").write(b"\x05"), "Corrupt safetensors file"),
    (lambda p: open(p, "r+b").write(struct.pack("<Q", 10 ** 12)), "Corrupt safetensors file"),
    (_break_offsets, "Corrupt safetensors file"),
    (_fp8, "unsupported dtype F8_E4M3"),
])
def test_corrupt_safetensors_are_one_line_errors(tmp_path, capsys, damage, expected):
  folder, _ = _hf_folder(str(tmp_path / "hf"))
  damage(os.path.join(folder, "model.safetensors"))
  assert main_lib.main(["inspect", folder]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "Traceback" not in err, err
  assert expected in err and "model.safetensors" in err, err


def test_pickles_are_refused_even_beside_safetensors_names(tmp_path, capsys):
  folder, _ = _hf_folder(str(tmp_path / "hf"))
  os.remove(os.path.join(folder, "model.safetensors"))
  open(os.path.join(folder, "pytorch_model.bin"), "wb").write(b"PK\x03\x04 never unpickled")
  assert main_lib.main(["inspect", folder]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "pickles are never loaded" in err


def test_bfloat16_tensors_come_back_bit_exact(tmp_path):
  import ml_dtypes
  folder, tensors = _hf_folder(str(tmp_path / "hf"), dtype=ml_dtypes.bfloat16)
  emb = readers.read_array(folder, "token_embedder/embedding")
  assert emb.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(emb.view(np.uint16), tensors["shared.weight"].view(np.uint16))


def test_correlations_match_hand_computed_values():
  # x = 1..4, y = 1,3,2,4: deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5);
  # sum of products 4, sums of squares 5 and 5: r = 4/5.
  assert metrics.pearson_corrcoef([1, 2, 3, 4], [1, 3, 2, 4])["pearson_corrcoef"] == (
      pytest.approx(80.0))
  # Tied x = 1,2,2,3 ranks as 1, 2.5, 2.5, 4 (the mean of the ranks the tie spans); y ranks
  # 1..4. Rank deviations (-1.5, 0, 0, 1.5) and (-1.5, -.5, .5, 1.5): 4.5 / sqrt(4.5 * 5).
  assert metrics.spearman_corrcoef([1, 2, 2, 3], [10, 20, 30, 40])["spearman_corrcoef"] == (
      pytest.approx(100 * 4.5 / np.sqrt(22.5)))
  # Monotone but not linear: Spearman 100, Pearson below.
  x = [1, 2, 3, 4, 5]
  assert metrics.spearman_corrcoef(x, [v ** 3 for v in x])["spearman_corrcoef"] == (
      pytest.approx(100.0))
  assert metrics.pearson_corrcoef(x, [v ** 3 for v in x])["pearson_corrcoef"] < 99.0


def test_correlation_of_a_constant_side_is_zero_not_nan(recwarn):
  # scipy returns NaN (and warns) when a side is constant; a NaN metric would
  # break checkpoint selection, so it counts as no correlation.
  assert metrics.pearson_corrcoef([1, 2, 3], [2, 2, 2])["pearson_corrcoef"] == 0.0
  assert metrics.spearman_corrcoef([5, 5, 5], [1, 2, 3])["spearman_corrcoef"] == 0.0
  assert not [w for w in recwarn if "constant" in str(w.message).lower()]
  with pytest.raises(ValueError, match="2 targets but 3 predictions"):
    metrics.pearson_corrcoef([1, 2], [1, 2, 3])
