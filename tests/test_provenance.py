"""Prompt provenance (issue 17, point 8): sidecars on export, one check on every load.

Each binary that reads a prompt file is run as a user runs it: train writes
sidecars, eval adds its metrics, and eval, infer, serve and recycle refuse a
prompt of another backbone with one line naming both fingerprints, unless
told to allow it; a prompt without a sidecar loads with a warning.
"""

import json
import logging
import os
import shutil

import gin
import jax
import numpy as np
import pytest

from prompt_tuning import readers
from prompt_tuning.cli import main as main_lib
from prompt_tuning.prompts import provenance
from prompt_tuning.readers import hf as hf_lib
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning import trees as tree_lib
from tests.conftest import TINY_CONFIG, TINY_T5X_CONFIG, fixture_path
from tests.test_binaries import TINY_MODEL_GIN

OTHER = "0123456789abcdef"  # A fingerprint no backbone here has.


# --- the fingerprint --------------------------------------------------------------

def _as_hf_folder(t5x_path, config, folder):
  """The T5X fixture's arrays written as a Hugging Face folder (names mapped, kernels transposed)."""
  from safetensors.numpy import save_file
  flat = tree_lib.flatten(readers.load_params(t5x_path, __import__(
      "prompt_tuning.models.t5", fromlist=["T5"]).T5(config)))
  tensors = {hf: np.ascontiguousarray(flat[ours].T if transpose else flat[ours])
             for hf, (ours, transpose) in hf_lib._name_map(config).items()}
  os.makedirs(folder)
  save_file(tensors, os.path.join(folder, "model.safetensors"))
  json.dump(dict(model_type="t5", architectures=["T5ForConditionalGeneration"],
                 vocab_size=config.vocab_size, d_model=config.emb_dim, d_kv=config.head_dim,
                 d_ff=config.mlp_dim, num_layers=config.num_encoder_layers,
                 num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
                 relative_attention_num_buckets=config.relative_attention_num_buckets,
                 relative_attention_max_distance=config.relative_attention_max_distance,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False),
            open(os.path.join(folder, "config.json"), "w"))
  return folder


def test_the_fingerprint_names_the_weights_not_their_storage(tmp_path):
  t5x = fixture_path("t5x_tiny_checkpoint")
  fp = provenance.backbone_fingerprint(t5x)
  assert len(fp) == 16 and int(fp, 16) >= 0
  config = readers.config_for(t5x)
  table = readers.read_array(t5x, "token_embedder/embedding")
  # The same weights as a Hugging Face folder, in bfloat16, or scanned: one fingerprint.
  hf = _as_hf_folder(t5x, TINY_T5X_CONFIG, str(tmp_path / "hf"))
  assert readers.is_hf_folder(hf) and provenance.backbone_fingerprint(hf) == fp
  import ml_dtypes
  assert provenance.fingerprint(config, table.astype(ml_dtypes.bfloat16)) == fp
  assert provenance.fingerprint(config.replace(scan_layers=True, weight_dtype="bfloat16"),
                                table) == fp
  # Another table (one entry moved past bfloat16's rounding) or architecture: another one.
  moved = table.astype(np.float32).copy()
  moved[7, 1] += 0.5 + abs(moved[7, 1])
  assert provenance.fingerprint(config, moved) != fp
  assert provenance.fingerprint(config.replace(num_heads=1, head_dim=4), table) != fp
  assert provenance.fingerprint(config.replace(mlp_activations=("relu",)), table) != fp


def test_sidecar_round_trip_and_its_bad_forms(tmp_path, caplog):
  path = str(tmp_path / "p.npy")
  prompt = np.ones((3, 4), np.float32)
  np.save(path, prompt)
  assert provenance.sidecar_path(path) == str(tmp_path / "p.provenance.json")
  with caplog.at_level(logging.WARNING):
    np.testing.assert_array_equal(provenance.load_prompt(path, backbone="aa" * 8), prompt)
  assert "has no provenance sidecar" in caplog.text
  provenance.write(path, provenance.record("aa" * 8, prompt, task="t", step=3))
  assert provenance.load_prompt(path, backbone="aa" * 8).shape == (3, 4)
  with pytest.raises(provenance.BackboneMismatchError) as e:
    provenance.load_prompt(path, backbone="bb" * 8, checkpoint="/ckpt/b")
  line = str(e.value)
  assert "\n" not in line and "aaaaaaaaaaaaaaaa" in line and "bbbbbbbbbbbbbbbb" in line
  assert "/ckpt/b" in line and "prompt-tuning recycle" in line
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    provenance.load_prompt(path, backbone="bb" * 8, allow_mismatch=True)
  assert "allowed:" in caplog.text
  # A sidecar left beside a replaced prompt describes another prompt: warned, not trusted.
  np.save(path, prompt * 2)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    provenance.load_prompt(path, backbone="bb" * 8)
  assert "does not hold the prompt its sidecar" in caplog.text
  open(provenance.sidecar_path(path), "w").write("{not json")
  with pytest.raises(ValueError, match="Corrupt provenance file"):
    provenance.load_prompt(path, backbone="bb" * 8)


def test_export_writes_sidecars_and_keeps_their_metrics(tmp_path):
  trainable = {"encoder_prompt": {"prompt": np.ones((2, 3), np.float32)}}
  [path] = checkpoints_lib.export_prompts(str(tmp_path), 5, trainable, backbone="cd" * 8,
                                          checkpoint="/ckpt", task="rte")
  side = provenance.read(path)
  assert side["backbone"]["fingerprint"] == "cd" * 8 and side["task"] == "rte"
  assert side["step"] == 5 and side["prompt"]["shape"] == [2, 3]
  assert provenance.add_metrics(path, "rte/validation", {"accuracy": 75.0})
  checkpoints_lib.export_prompts(str(tmp_path), 5, trainable, backbone="cd" * 8)  # a resume
  assert provenance.read(path)["metrics"] == {"rte/validation": {"accuracy": 75.0}}
  # Without a known backbone nothing is claimed.
  [bare] = checkpoints_lib.export_prompts(str(tmp_path / "b"), 1, trainable)
  assert provenance.read(bare) is None


# --- the binaries -----------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(straight, tmp_path_factory):
  """A copy of the session's `straight` run (6 steps on the T5X fixture, trained by the
  train binary: the same model, task and flags as `_gin`'s), then eval of its last
  checkpoint in the copy."""
  fixture_path("t5_spm.model")
  root = tmp_path_factory.mktemp("provenance")
  (root / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  run = str(root / "run")
  shutil.copytree(straight, run)
  assert _gin("eval", root, run, "--gin.MAX_EVAL_EXAMPLES=8") == 0
  return root, run


def _gin(command, root, model_dir, *extra):
  gin.clear_config()
  run_file = {"train": "runs/prompt_finetune.gin", "eval": "runs/prompt_eval.gin",
              "infer": "runs/prompt_infer.gin"}[command]
  argv = [command, f"--gin_file={root / 'tiny_model.gin'}", f"--gin_file={run_file}",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", "--gin.BATCH_SIZE=8",
          *extra]
  try:
    return main_lib.main(argv)
  finally:
    gin.clear_config()


def test_train_writes_sidecars_and_eval_adds_its_metrics(run_dir):
  _, run = run_dir
  path = os.path.join(run, "prompts", "step_6", "encoder_prompt.prompt.npy")
  side = provenance.read(path)
  assert side["backbone"]["fingerprint"] == provenance.backbone_fingerprint(
      fixture_path("t5x_tiny_checkpoint"))
  assert side["task"] == "pt_test_sentiment" and side["step"] == 6
  assert side["prompt"]["digest"] == provenance.prompt_digest(np.load(path))
  logged = [json.loads(line) for line in open(os.path.join(run, "eval", "metrics.jsonl"))][-1]
  assert logged["decoding"] == "greedy"  # Each row says how it decoded.
  recorded = side["metrics"]["pt_test_sentiment/validation/greedy"]
  assert recorded and recorded == {k: logged[k] for k in recorded}
  assert recorded["num_examples"] == 8


def _prompt_with(run, folder, fingerprint):
  """A copy of the trained prompt whose sidecar names `fingerprint` (None: no sidecar)."""
  src = os.path.join(run, "prompts", "step_6", "encoder_prompt.prompt.npy")
  os.makedirs(folder, exist_ok=True)
  dst = os.path.join(folder, "p.npy")
  shutil.copy(src, dst)
  if fingerprint:
    side = provenance.read(src)
    side["backbone"]["fingerprint"] = fingerprint
    provenance.write(dst, side)
  return dst


def _one_line(capsys):
  err = capsys.readouterr().err.strip()
  lines = [line for line in err.splitlines() if line.startswith("prompt-tuning")]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_eval_and_infer_refuse_a_prompt_of_another_backbone(run_dir, command, capsys, caplog):
  root, run = run_dir
  ours = provenance.backbone_fingerprint(fixture_path("t5x_tiny_checkpoint"))
  limit = "--gin.MAX_EVAL_EXAMPLES=4" if command == "eval" else "--gin.MAX_INFER_EXAMPLES=4"
  from_file = lambda p, *more: _gin(command, root, str(root / f"out_{command}"), limit,  # noqa
                                     "--gin_file=prompts/from_file.gin",
                                     f"--gin.PROMPT_FILE='{p}'",
                                     "--gin.RESTORE_CHECKPOINT=False", *more)
  other = _prompt_with(run, str(root / f"other_{command}"), OTHER)
  capsys.readouterr()
  assert from_file(other) == 2
  line = _one_line(capsys)
  assert OTHER in line and ours in line and "prompt-tuning recycle" in line
  assert "ALLOW_BACKBONE_MISMATCH" in line
  assert from_file(other, "--gin.ALLOW_BACKBONE_MISMATCH=True") == 0
  # Its own backbone: loads, the check reading no array a second time.
  own = _prompt_with(run, str(root / f"own_{command}"), ours)
  readers.ARRAY_READS.clear()
  assert from_file(own) == 0
  counts = {name: n for (_, name), n in readers.ARRAY_READS.items()}
  assert counts["token_embedder/embedding"] == 1 and set(counts.values()) == {1}
  # No sidecar: loads, with a warning.
  bare = _prompt_with(run, str(root / f"bare_{command}"), None)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert from_file(bare) == 0
  assert f"{bare} has no provenance sidecar" in caplog.text


def test_recycle_checks_the_source_and_writes_the_target_provenance(tmp_path, capsys):
  tiny, inline = fixture_path("t5x_tiny_checkpoint"), fixture_path("t5x_inline_checkpoint")
  from prompt_tuning.recycling import methods
  methods._CACHE.clear()
  prompt = np.random.RandomState(0).normal(size=(5, 4)).astype(np.float32)
  path = str(tmp_path / "p.npy")
  np.save(path, prompt)
  source_fp = provenance.backbone_fingerprint(tiny)
  target_fp = provenance.backbone_fingerprint(inline)
  assert source_fp != target_fp
  provenance.write(path, provenance.record(source_fp, prompt, task="rte", step=9))
  argv = ["recycle", f"--source_checkpoint={tiny}", f"--target_checkpoint={inline}",
          f"--prompt={path}", "--method=linear",
          f"--filter_file={fixture_path('english_vocab_filter.json')}"]
  assert main_lib.main(argv + [f"--out={tmp_path / 'q.npy'}"]) == 0
  side = provenance.read(str(tmp_path / "q.npy"))
  assert side["backbone"]["fingerprint"] == target_fp and side["task"] == "rte"
  assert side["recycled_from"]["backbone"]["fingerprint"] == source_fp
  assert side["metrics"] == {} and side["source_checked"]
  # The recycled prompt now passes the check on the target, and fails on the source.
  provenance.load_prompt(str(tmp_path / "q.npy"), checkpoint=inline)
  with pytest.raises(provenance.BackboneMismatchError):
    provenance.load_prompt(str(tmp_path / "q.npy"), checkpoint=tiny)
  # A prompt of the target backbone given as the source: one line, both fingerprints.
  provenance.write(path, provenance.record(target_fp, prompt))
  capsys.readouterr()
  assert main_lib.main(argv + [f"--out={tmp_path / 'r.npy'}"]) == 2
  line = _one_line(capsys)
  assert source_fp in line and target_fp in line and "recycle" in line
  assert not os.path.exists(tmp_path / "r.npy")
  assert main_lib.main(argv + [f"--out={tmp_path / 'r.npy'}", "--allow_backbone_mismatch"]) == 0


@pytest.fixture(scope="module")
def serve_backbone(tmp_path_factory):
  import orbax.checkpoint as ocp
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  root = tmp_path_factory.mktemp("serve_provenance")
  config = TINY_CONFIG.replace(vocab_size=384)  # the byte vocabulary's 259 ids fit
  backbone = str(root / "backbone")
  ocp.PyTreeCheckpointer().save(os.path.join(backbone, "checkpoint_0"), {
      "target": jax.device_get(params_lib.init_params(T5(config), jax.random.PRNGKey(0)))})
  return root, backbone, config


@pytest.fixture
def serve_logging():
  """`prompt-tuning serve` sets up its JSON logging for the process: undo it afterwards."""
  names = ("prompt_tuning", "uvicorn.error")
  saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level,
               logging.getLogger(n).propagate) for n in names}
  yield
  from prompt_tuning.serving import server as server_lib
  if server_lib._listener is not None:
    server_lib._listener.stop()
    server_lib._listener = None
  for n, (handlers, level, propagate) in saved.items():
    logger = logging.getLogger(n)
    logger.handlers, logger.propagate = handlers, propagate
    logger.setLevel(level)


def test_serve_checks_provenance_and_serves_peft_folders(serve_backbone, tmp_path, capsys,
                                                          serve_logging):
  from prompt_tuning.serving import cli as serving_cli
  _, backbone, config = serve_backbone
  fp = provenance.backbone_fingerprint(backbone)
  rng = np.random.RandomState(1)
  values = {n: rng.uniform(-2, 2, (3, config.emb_dim)).astype(np.float32) for n in "abc"}
  for name, value in values.items():
    np.save(tmp_path / f"{name}.npy", value)
  provenance.write(str(tmp_path / "a.npy"), provenance.record(fp, values["a"]))
  provenance.write(str(tmp_path / "c.npy"), provenance.record(OTHER, values["c"]))
  adapter = str(tmp_path / "a_peft")
  assert main_lib.main(["export-peft", f"--prompt={tmp_path / 'a.npy'}",
                        f"--checkpoint={backbone}", f"--out={adapter}"]) == 0
  flags = ["--relative_attention_max_distance=16", "--no_warmup", "--batch_buckets=2",
           "--length_buckets=16", "--target_buckets=8", "--max_prompts=4"]
  args = main_lib.build_parser().parse_args(
      ["serve", backbone, f"--prompt=peft={adapter}", f"--prompt=plain={tmp_path / 'b.npy'}",
       *flags])
  engine, _ = serving_cli.build(args)
  bank, rows = engine.prompts.snapshot()
  assert sorted(rows) == ["peft", "plain"]
  np.testing.assert_array_equal(np.asarray(bank)[rows["peft"]], values["a"])
  np.testing.assert_array_equal(np.asarray(bank)[rows["plain"]], values["b"])
  # A prompt of another backbone stops the server before it starts: one line.
  argv = ["serve", backbone, f"--prompt=c={tmp_path / 'c.npy'}", *flags]
  capsys.readouterr()
  assert main_lib.main(argv) == 2
  line = _one_line(capsys)
  assert OTHER in line and fp in line and "recycle" in line
  engine, _ = serving_cli.build(main_lib.build_parser().parse_args(
      argv + ["--allow_backbone_mismatch"]))
  assert engine.prompts.names() == ["c"]
