"""The catalog of bad inputs: each gives one clear line (exit code 2, no
traceback) naming what was wrong and what was expected, through the binaries
as a user meets it. The README lists the same catalog."""

import json
import os

import gin
import numpy as np
import pytest

from prompt_tuning.cli import main as main_lib
from prompt_tuning.recycling import support
from tests.conftest import fixture_path
from tests.test_binaries import TINY_MODEL_GIN


@pytest.fixture
def run(tmp_path, capsys):
  """Runs `prompt-tuning train` on the tiny config; returns its one-line error."""
  fixture_path("t5_spm.model")
  (tmp_path / "tiny_model.gin").write_text(TINY_MODEL_GIN)

  def _run(*extra, command="train", model_gin=str(tmp_path / "tiny_model.gin"),
           checkpoint=None):
    gin.clear_config()
    run_file = {"train": "runs/prompt_finetune.gin", "eval": "runs/prompt_eval.gin"}[command]
    argv = [command, f"--gin_file={model_gin}", f"--gin_file={run_file}",
            f"--gin.MODEL_DIR='{tmp_path / 'model_dir'}'",
            "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{checkpoint or fixture_path('t5x_tiny_checkpoint')}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
            "--gin.BATCH_SIZE=4", "--gin.TRAIN_STEPS=1", *extra]
    capsys.readouterr()
    code = main_lib.main(argv)
    gin.clear_config()
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("prompt-tuning")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
  return _run


def test_prompt_file_of_the_wrong_shape(run):
  line = run("--gin_file=prompts/from_file.gin",
             f"--gin.PROMPT_FILE='{fixture_path('prompt_5x256.npy')}'")
  assert "prompt_5x256.npy has shape (5, 256)" in line and "shape (4, 4)" in line


def test_prompt_file_of_the_wrong_dtype(run, tmp_path):
  path = tmp_path / "words.npy"
  np.save(path, np.array([["a", "b", "c", "d"]] * 4))
  line = run("--gin_file=prompts/from_file.gin", f"--gin.PROMPT_FILE='{path}'")
  assert "holds dtype <U1; expected a float array" in line


def test_prompt_file_holding_a_pickle(run, tmp_path):
  path = tmp_path / "pickled.npy"
  np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  line = run("--gin_file=prompts/from_file.gin", f"--gin.PROMPT_FILE='{path}'")
  assert "pickled objects are refused" in line


def test_checkpoint_folder_missing(run, tmp_path):
  line = run(checkpoint=str(tmp_path / "nowhere"))
  assert "Checkpoint not found" in line and "nowhere" in line


def test_checkpoint_corrupt(run, tmp_path):
  folder = tmp_path / "ckpt" / "checkpoint_1"
  folder.mkdir(parents=True)
  (folder / "checkpoint").write_bytes(b"\xc1 not msgpack")
  line = run(checkpoint=str(folder))
  assert "Corrupt T5X checkpoint file" in line


def test_checkpoint_missing_parameters(run, tmp_path):
  model = tmp_path / "deeper.gin"
  model.write_text(TINY_MODEL_GIN + "T5Config.num_decoder_layers = 3\n")
  line = run(model_gin=str(model))
  assert "does not match the model" in line and "missing: decoder/layers_2/" in line


def test_hf_config_of_an_unsupported_architecture(tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
  assert main_lib.main(["inspect", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "unsupported architecture" in err and "gpt2" in err


def test_unknown_task_suggests_close_names(run):
  line = run("--gin.MIXTURE_OR_TASK_NAME='synthetic_revers_bare'")
  assert "Unknown task or mixture 'synthetic_revers_bare'" in line
  assert "synthetic_reverse_bare" in line


def test_gin_file_not_found(run):
  line = run("--gin_file=runs/prompt_finetuned.gin")
  assert "gin file 'runs/prompt_finetuned.gin' not found" in line


def test_unknown_gin_binding(run):
  line = run("--gin.train.learning_rate=0.3")
  assert "learning_rate" in line and "Bad gin configuration" in line


def test_prompt_longer_than_the_input_budget(run):
  line = run("--gin.ChecksSpec.max_encoder_length=12")
  assert "Prompt length 4 + inputs length 16 = 20 exceeds" in line


def test_empty_dataset_split(run):
  line = run("--gin.MIXTURE_OR_TASK_NAME='pt_test_empty'")
  assert "yielded no batch" in line and "pt_test_empty" in line


def test_vocabulary_size_mismatch(run, tmp_path):
  # The quickstart's byte-vocabulary model (384 rows) cannot read T5's 32,000 pieces.
  model = tmp_path / "bytes_model.gin"
  model.write_text("import tests.tiny_tasks\ninclude 'models/synthetic_tiny.gin'\n"
                   "include 'prompts/soft_prompt.gin'\nPROMPT_LENGTH = 4\n")
  line = run(model_gin=str(model))
  assert "vocabulary of 32000 ids" in line and "384 rows" in line


def test_a_config_missing_its_prompt_file(run):
  line = run(model_gin="models/synthetic_tiny.gin")
  assert "has no value" in line and "prompts/soft_prompt.gin" in line


def test_recycling_support_id_out_of_range():
  ids = support.load_filter(fixture_path("english_vocab_filter.json"))
  assert len(ids) == 16779
  with pytest.raises(ValueError, match=r"out of range.*\[384, 32128\] rows.*\[0, 384\)"):
    support.support_ids([384, 32128], ids)
  chosen = support.support_ids([32128, 32128], ids)  # the paper's skip 1000, take 4000
  assert chosen.tolist() == ids[1000:5000]
