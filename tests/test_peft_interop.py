"""PEFT interop (issue 17, point 7) against the real `peft`, `transformers` and `torch`.

A tiny random Hugging Face T5 is saved with `save_pretrained` and read by this
library's HF reader, so both sides run the same weights. A prompt exported
with `prompt-tuning export-peft` is loaded by `PeftModel.from_pretrained`, and
PEFT's generate must give the tokens `evaluation.predict` gives; folders PEFT
itself saved are read back by `prompt-tuning import-peft`.

The [interop] extra is required in CI: without peft these tests skip, unless
PT_REQUIRE_FIXTURES=1, where they fail.
"""

import dataclasses
import importlib
import json
import logging
import os

import numpy as np
import pytest


def _require(module: str):
  try:
    return importlib.import_module(module)
  except ImportError as e:
    message = f"{module} is not installed (the [interop] extra): {e}"
    if os.environ.get("PT_REQUIRE_FIXTURES") == "1":
      pytest.fail(message + "; PT_REQUIRE_FIXTURES=1 requires it", pytrace=False)
    pytest.skip(message, allow_module_level=True)


peft = _require("peft")
torch = _require("torch")
transformers = _require("transformers")

import jax.numpy as jnp  # noqa: E402

from prompt_tuning import decoding, evaluation, readers  # noqa: E402
from prompt_tuning.cli import main as main_lib  # noqa: E402
from prompt_tuning.models.t5 import T5, shift_right  # noqa: E402
from prompt_tuning.prompts import initializers, provenance, soft  # noqa: E402
from prompt_tuning.readers import peft as peft_format  # noqa: E402
from prompt_tuning.runtime import setup as model_setup  # noqa: E402
from prompt_tuning.runtime.specs import InferenceSpec, ModelSpec  # noqa: E402
from tests.test_hf_parity import COMMON, VOCAB, _make_hf_model  # noqa: E402

P = 5
DECODE = 12


class _Ids:
  """A 'vocabulary' whose text is the ids themselves, so predictions compare as tokens."""

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


def _hf(variant):
  """The tiny random HF T5 of test_hf_parity, the same weights on every call.

  The decoder-start (pad) embedding is shrunk: with tied random weights
  (T5 1.0) the residual stream otherwise carries it to the output, and greedy
  decoding repeats token 0 whatever the input, which would compare nothing.
  """
  model = _make_hf_model(variant)
  with torch.no_grad():
    model.shared.weight[0] *= 0.05
  return model


@pytest.fixture(scope="module", params=["t5_1_1", "t5_1_0"])
def backbone(request, tmp_path_factory):
  hf_model = _hf(request.param)
  folder = str(tmp_path_factory.mktemp(request.param) / "hf")
  hf_model.save_pretrained(folder)
  return request.param, hf_model, folder


def _inputs():
  """Several rows of different lengths, EOS-terminated and right-padded (as infer feeds)."""
  rng = np.random.RandomState(3)
  rows = [rng.randint(2, VOCAB, size=n).tolist() + [1] for n in (11, 4, 7, 1)]
  enc = np.zeros((len(rows), 12), np.int64)
  for i, r in enumerate(rows):
    enc[i, :len(r)] = r
  return rows, enc


def _prompt(seed=0, width=COMMON["d_model"]):
  # Embedding-scale values (the tiny models' embeddings are N(0, 1)).
  return np.random.RandomState(seed).normal(size=(P, width)).astype(np.float32)


def _ours(folder, prompt_path, rows, **from_file):
  """(tokens per row, cut at EOS) from evaluation.predict, the infer binary's decoder."""
  spec = ModelSpec(readers.config_for(folder), folder, soft.SoftPrompt(
      length=P, init=initializers.from_file(prompt_path, backbone=folder, **from_file)))
  setup = model_setup.build(spec, require_trainable=False)
  params = {**setup.trainable, **setup.frozen}
  preds = evaluation.predict(setup.model, params, [{"inputs": r} for r in rows], _Ids(),
                             input_length=12, batch_size=len(rows),
                             inference=InferenceSpec(decoding=decoding.DecodingConfig(
                                 method="greedy", max_decode_length=DECODE)))
  return [[int(t) for t in text.split()] for text, _ in preds], setup.model, params


def _peft_tokens(peft_model, enc):
  with torch.no_grad():
    out = peft_model.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                              max_new_tokens=DECODE, do_sample=False, num_beams=1,
                              # HF's KV cache breaks when encoder and decoder depths
                              # differ (2 vs 3 here); the uncached path is the same math.
                              use_cache=False).numpy()
  tokens = []
  for row in out[:, 1:]:  # Drop the decoder start token.
    row = [int(t) for t in row]
    tokens.append(row[:row.index(1)] if 1 in row else row)
  return tokens


def _write_with_provenance(path, prompt, folder):
  np.save(path, prompt)
  provenance.write(str(path), provenance.record(provenance.backbone_fingerprint(folder), prompt,
                                                checkpoint=folder, task="tiny", step=7))


def test_exported_adapter_loads_in_peft_and_generates_what_infer_does(backbone, tmp_path):
  variant, _, folder = backbone
  hf_model = _hf(variant)  # Fresh: PEFT wraps the model it is given.
  prompt = _prompt()
  _write_with_provenance(tmp_path / "p.npy", prompt, folder)
  out = str(tmp_path / "adapter")
  assert main_lib.main(["export-peft", f"--prompt={tmp_path / 'p.npy'}",
                        f"--checkpoint={folder}", f"--out={out}"]) == 0
  assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors",
                                     "provenance.json"]
  side = provenance.read(out)  # The prompt's provenance travels with it.
  assert side["task"] == "tiny" and side["step"] == 7 and side["source_checked"]
  assert side["backbone"]["fingerprint"] == provenance.backbone_fingerprint(folder)
  peft_model = peft.PeftModel.from_pretrained(hf_model, out).eval()
  assert isinstance(peft_model.peft_config["default"], peft.PromptTuningConfig)
  saved = peft_model.get_prompt_embedding_to_save("default").numpy()
  np.testing.assert_array_equal(saved, prompt)

  rows, enc = _inputs()
  ours, model, params = _ours(folder, str(tmp_path / "p.npy"), rows)
  theirs = _peft_tokens(peft_model, enc)
  assert ours == theirs
  # Not vacuous: the prompt changes what is generated, and rows differ.
  assert theirs != _peft_tokens(peft_model.get_base_model(), enc)
  assert len({tuple(t) for t in theirs}) > 1 and all(len(t) > 0 for t in theirs)

  # The same through a forward pass: PEFT's mask and positions over the
  # prompt equal this model's (logits of every real target position).
  tgt = np.random.RandomState(5).randint(2, VOCAB, size=(len(rows), 6))
  dec_in = np.asarray(shift_right(jnp.asarray(tgt)))
  with torch.no_grad():
    hf_logits = peft_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                           decoder_input_ids=torch.tensor(dec_in)).logits.numpy()
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec_in),
                                  jnp.asarray(tgt)))
  np.testing.assert_allclose(logits, hf_logits, rtol=1e-4, atol=1e-4)
  assert np.std(hf_logits) > 0.1


def test_adapter_config_has_exactly_the_fields_peft_saves(tmp_path):
  ours = tmp_path / "ours"
  peft_format.write_adapter(str(ours), _prompt(), num_heads=3, num_layers=2)
  # A folder PEFT itself saves for the same model and method.
  theirs = tmp_path / "theirs"
  config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P)
  peft.get_peft_model(_hf("t5_1_1"), config).save_pretrained(str(theirs))
  ours_cfg = json.load(open(ours / "adapter_config.json"))
  theirs_cfg = json.load(open(theirs / "adapter_config.json"))
  assert set(ours_cfg) == set(theirs_cfg)
  assert set(ours_cfg) == {f.name for f in dataclasses.fields(peft.PromptTuningConfig)}
  for key in ("peft_type", "task_type", "num_virtual_tokens", "token_dim",
              "num_attention_heads", "num_layers", "inference_mode", "prompt_tuning_init"):
    assert ours_cfg[key] == theirs_cfg[key], key
  from safetensors import safe_open
  with safe_open(str(theirs / "adapter_model.safetensors"), "np") as t, \
      safe_open(str(ours / "adapter_model.safetensors"), "np") as o:
    assert list(t.keys()) == list(o.keys()) == ["prompt_embeddings"]
    assert o.metadata() == t.metadata()
  loaded = peft.PeftConfig.from_pretrained(str(ours))
  assert type(loaded) is peft.PromptTuningConfig and loaded.num_transformer_submodules == 1


def test_import_reads_a_folder_peft_saved_and_infer_matches_its_generate(
    backbone, tmp_path, caplog):
  variant, _, folder = backbone
  hf_model = _hf(variant)
  # PEFT's seq2seq default: 2 submodules, 2P rows; generate uses the first P.
  config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P,
                                   prompt_tuning_init="RANDOM")
  peft_model = peft.get_peft_model(hf_model, config)
  with torch.no_grad():
    weight = peft_model.prompt_encoder["default"].embedding.weight
    weight.copy_(torch.tensor(np.random.RandomState(9).normal(size=tuple(weight.shape))))
  assert tuple(weight.shape) == (2 * P, COMMON["d_model"])
  saved = str(tmp_path / "peft_saved")
  peft_model.save_pretrained(saved)
  out = tmp_path / "imported.npy"
  with caplog.at_level(logging.WARNING):
    assert main_lib.main(["import-peft", f"--adapter={saved}", f"--checkpoint={folder}",
                          f"--out={out}"]) == 0
  assert "has no provenance sidecar" in caplog.text  # PEFT writes none: a warning, not an error.
  imported = np.load(out)
  np.testing.assert_array_equal(imported, weight.detach().numpy()[:P])
  side = provenance.read(str(out))
  assert side["backbone"]["fingerprint"] == provenance.backbone_fingerprint(folder)
  assert side["source_checked"] is False  # Only the user's word: PEFT wrote no sidecar.
  rows, enc = _inputs()
  loaded = peft.PeftModel.from_pretrained(_hf(variant), saved).eval()
  ours, _, _ = _ours(folder, str(out), rows)
  assert ours == _peft_tokens(loaded, enc)
  # Export, then import again: the same prompt, bit for bit.
  assert main_lib.main(["export-peft", f"--prompt={out}", f"--checkpoint={folder}",
                        f"--out={tmp_path / 'again'}"]) == 0
  assert main_lib.main(["import-peft", f"--adapter={tmp_path / 'again'}",
                        f"--checkpoint={folder}", f"--out={tmp_path / 'again.npy'}"]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), imported)


def _one_line_error(argv, capsys):
  capsys.readouterr()
  assert main_lib.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "Traceback" not in err, err
  return err


def test_a_folder_of_another_peft_method_is_one_clear_error(backbone, tmp_path, capsys):
  _, _, folder = backbone
  lora = str(tmp_path / "lora")
  config = peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=2, target_modules=["q", "v"])
  peft.get_peft_model(_hf("t5_1_1"), config).save_pretrained(lora)
  err = _one_line_error(["import-peft", f"--adapter={lora}", f"--checkpoint={folder}",
                         f"--out={tmp_path / 'x.npy'}"], capsys)
  assert "is a PEFT LORA adapter" in err and "PROMPT_TUNING" in err
  assert not os.path.exists(tmp_path / "x.npy")
  # serve and eval read adapter folders through the same reader.
  with pytest.raises(ValueError, match="is a PEFT LORA adapter"):
    provenance.read_prompt(lora)


def test_a_prompt_of_another_width_is_one_clear_error(backbone, tmp_path, capsys):
  _, _, folder = backbone
  wide = transformers.T5ForConditionalGeneration(transformers.T5Config(
      **{**COMMON, "d_model": 24, "feed_forward_proj": "gated-gelu"}))
  saved = str(tmp_path / "wide_adapter")
  peft.get_peft_model(wide, peft.PromptTuningConfig(
      task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P)).save_pretrained(saved)
  err = _one_line_error(["import-peft", f"--adapter={saved}", f"--checkpoint={folder}",
                         f"--out={tmp_path / 'x.npy'}"], capsys)
  assert "width (token_dim) 24" in err and "has width 16" in err
  np.save(tmp_path / "wide.npy", _prompt(width=24))
  err = _one_line_error(["export-peft", f"--prompt={tmp_path / 'wide.npy'}",
                         f"--checkpoint={folder}", f"--out={tmp_path / 'out'}"], capsys)
  assert "shape [5, 24]" in err and "has width 16" in err and "expected [P, 16]" in err
