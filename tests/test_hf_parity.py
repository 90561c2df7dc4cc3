"""Parity with Hugging Face transformers' PyTorch T5 on the same random weights.

The HF model is written with `save_pretrained` and read back by our HF reader
(config included), so the test covers the reader, the name mapping and the
computation. Needs the [interop] extra (torch, transformers).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from prompt_tuning.models.t5 import shift_right
from prompt_tuning import decoding  # noqa: E402
from prompt_tuning import readers  # noqa: E402
from prompt_tuning.models.t5 import T5  # noqa: E402
from prompt_tuning.readers import hf as hf_lib  # noqa: E402
from prompt_tuning import trees as tree_lib  # noqa: E402

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_decoder_layers=3,
              num_heads=3, relative_attention_num_buckets=8,
              relative_attention_max_distance=20, dropout_rate=0.0,
              decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
VARIANTS = {
    "t5_1_1": dict(cls="T5ForConditionalGeneration", feed_forward_proj="gated-gelu",
                   tie_word_embeddings=False),
    "t5_1_0": dict(cls="T5ForConditionalGeneration", feed_forward_proj="relu",
                   tie_word_embeddings=True),
    "umt5": dict(cls="UMT5ForConditionalGeneration", feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False),
}


def _make_hf_model(variant, seed=0):
  spec = dict(VARIANTS[variant])
  cls = getattr(transformers, spec.pop("cls"))
  config_cls = transformers.UMT5Config if variant == "umt5" else transformers.T5Config
  torch.manual_seed(seed)
  model = cls(config_cls(**COMMON, **spec)).eval()
  untied = not spec["tie_word_embeddings"]
  if untied:  # transformers 5 ties the head even for v1.1 configs; untie it.
    model.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, COMMON["d_model"]))
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif "relative_attention_bias" in name:
        p.copy_(torch.randn(p.shape, generator=gen))
      elif name in ("shared.weight", "lm_head.weight"):
        p.copy_(torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))
  if untied:
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  return model


def _batch():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, VOCAB, size=(3, 27))
  enc[0, 26] = 1
  enc[1, 14] = 1
  enc[1, 15:] = 0  # padding
  enc[2, 5] = 1
  enc[2, 6:] = 0
  tgt = rng.randint(2, VOCAB, size=(3, 9))
  tgt[1, 4] = 1
  tgt[1, 5:] = 0
  return enc, tgt


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
  variant = request.param
  hf_model = _make_hf_model(variant)
  folder = str(tmp_path_factory.mktemp(variant))
  hf_model.save_pretrained(folder)
  config = readers.config_for(folder)
  model = T5(config)
  params = readers.load_params(folder, model)
  return variant, hf_model, folder, model, params


def test_config_read_from_config_json(pair):
  variant, _, folder, model, _ = pair
  cfg = model.config
  assert (cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim) == (16, 3, 8, 24)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (2, 3)
  assert cfg.logits_via_embedding == (variant == "t5_1_0")
  assert cfg.mlp_activations == (("relu",) if variant == "t5_1_0" else ("gelu", "linear"))
  assert cfg.shared_relative_bias == (variant != "umt5")


def _hf_scales_untied_umt5(hf_model) -> bool:
  """Whether this transformers scales an untied umT5's decoder output: newer
  releases say so in `config.scale_decoder_outputs` (False for an untied
  head); older 5.x releases always did."""
  return getattr(hf_model.config, "scale_decoder_outputs", True) is not False


def test_encoder_and_logits_match(pair):
  variant, hf_model, _, model, params = pair
  enc, tgt = _batch()
  dec_in = np.asarray(shift_right(jnp.asarray(tgt)))
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                   decoder_input_ids=torch.tensor(dec_in), output_hidden_states=False)
  hf_logits = out.logits.numpy()
  hf_encoded = out.encoder_last_hidden_state.numpy()
  encoded, mask = model.apply({"params": params}, jnp.asarray(enc), method=T5.encode)
  logits = model.apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec_in),
                       jnp.asarray(tgt))
  valid_enc = enc > 0
  np.testing.assert_array_equal(np.asarray(mask), valid_enc)
  np.testing.assert_allclose(np.asarray(encoded)[valid_enc], hf_encoded[valid_enc],
                             rtol=1e-4, atol=1e-4)
  valid_dec = tgt > 0
  ours = np.asarray(logits)
  if variant == "umt5" and _hf_scales_untied_umt5(hf_model):
    # transformers 5 before `scale_decoder_outputs` reached umT5 forced
    # tie_word_embeddings=True for it and so scaled the decoder output by
    # d_model^-0.5 even with an untied head; T5X's umT5 (and this model) does
    # not. The logits then differ by exactly that factor.
    ours = ours * COMMON["d_model"] ** -0.5
  np.testing.assert_allclose(ours[valid_dec], hf_logits[valid_dec], rtol=1e-4, atol=1e-4)
  # The comparison is not vacuous: logits vary and differ across positions.
  assert np.std(hf_logits[valid_dec]) > 0.1


def test_greedy_decoding_matches_hf_generate(pair):
  _, hf_model, _, model, params = pair
  enc, _ = _batch()
  with torch.no_grad():
    hf_out = hf_model.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                               max_new_tokens=16, do_sample=False, num_beams=1,
                               # HF's KV cache breaks when encoder and decoder
                               # depths differ (2 vs 3 here); its uncached
                               # path is the same computation.
                               use_cache=False).numpy()
  hf_tokens = np.zeros((3, 16), np.int64)
  hf_tokens[:, :hf_out.shape[1] - 1] = hf_out[:, 1:]  # drop the start token
  for use_cache in (True, False):
    cfg = decoding.DecodingConfig(method="greedy", max_decode_length=16, use_cache=use_cache)
    tokens, _ = decoding.generate(model, params, jnp.asarray(enc), cfg)
    np.testing.assert_array_equal(np.asarray(tokens), hf_tokens)


def test_sharded_safetensors_index_reads_the_same(pair, tmp_path):
  _, hf_model, folder, model, params = pair
  sharded = str(tmp_path / "sharded")
  hf_model.save_pretrained(sharded, max_shard_size="20KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  assert not os.path.exists(os.path.join(sharded, "model.safetensors"))
  again = readers.load_params(sharded, model)
  flat, flat_again = tree_lib.flatten(params), tree_lib.flatten(again)
  assert set(flat) == set(flat_again)
  for k in flat:
    assert flat[k].tobytes() == flat_again[k].tobytes(), k


def test_bfloat16_safetensors_are_read_exactly(tmp_path):
  hf_model = _make_hf_model("t5_1_1").to(torch.bfloat16)
  hf_model.save_pretrained(str(tmp_path))
  emb = readers.read_array(str(tmp_path), "token_embedder/embedding")
  assert str(emb.dtype) == "bfloat16"
  want = hf_model.shared.weight.detach().view(torch.int16).numpy()
  np.testing.assert_array_equal(emb.view(np.int16), want)
  kernel = readers.read_array(str(tmp_path), "encoder/layers_1/attention/query/kernel")
  want_q = hf_model.encoder.block[1].layer[0].SelfAttention.q.weight.detach().T.contiguous()
  np.testing.assert_array_equal(kernel.view(np.int16), want_q.view(torch.int16).numpy())


def test_reads_only_the_requested_tensor(pair, monkeypatch):
  variant, _, folder, _, _ = pair
  seen = []
  real = hf_lib.SafetensorsFile.read
  monkeypatch.setattr(hf_lib.SafetensorsFile, "read",
                      lambda self, name: seen.append(name) or real(self, name))
  emb = readers.read_array(folder, "token_embedder/embedding")
  assert emb.shape == (VOCAB, 16)
  # Opening a umT5 folder whose config.json does not record
  # `scale_decoder_outputs` (older transformers 5 releases) also compares
  # lm_head with the embedding, since such a config cannot say whether umT5 is
  # tied; no layer is read.
  with open(os.path.join(folder, "config.json")) as f:
    unrecorded = "scale_decoder_outputs" not in json.load(f)
  want = ({"shared.weight", "lm_head.weight"} if variant == "umt5" and unrecorded
          else {"shared.weight"})
  assert set(seen) == want and seen[-1] == "shared.weight"


def test_unsupported_architecture_is_a_clear_error(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "bart", "architectures": ["BartForConditionalGeneration"]}))
  with pytest.raises(ValueError, match="unsupported architecture.*bart"):
    readers.open_checkpoint(str(tmp_path))


def test_pickle_only_folder_is_refused(pair, tmp_path):
  _, _, folder, _, _ = pair
  (tmp_path / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="pickles are never loaded"):
    readers.open_checkpoint(str(tmp_path))


def test_corrupt_safetensors_is_a_clear_error(pair, tmp_path):
  _, _, folder, model, _ = pair
  (tmp_path / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
  data = open(os.path.join(folder, "model.safetensors"), "rb").read()
  (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
  with pytest.raises(ValueError, match="Corrupt safetensors file"):
    readers.load_params(str(tmp_path), model)


def test_missing_tensor_is_listed(pair, tmp_path):
  _, hf_model, _, model, _ = pair
  from safetensors.numpy import save_file
  tensors = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()
             if k != "encoder.block.1.layer.1.DenseReluDense.wo.weight"}
  tensors = {k: v for k, v in tensors.items() if not k.endswith("embed_tokens.weight")}
  save_file(tensors, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
  with pytest.raises(readers.CheckpointMismatchError, match="missing: encoder/layers_1/mlp/wo"):
    readers.load_params(str(tmp_path), model)
