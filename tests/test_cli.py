"""The `prompt-tuning` command and config inference for T5X checkpoints."""

import subprocess
import sys

import pytest

from prompt_tuning.cli import main as main_lib
from prompt_tuning.readers import config as infer
from prompt_tuning.readers import t5x
from tests.conftest import INLINE_T5X_CONFIG, TINY_T5X_CONFIG, fixture_path


@pytest.mark.parametrize("fixture,config", [
    ("t5x_tiny_checkpoint", TINY_T5X_CONFIG), ("t5x_inline_checkpoint", INLINE_T5X_CONFIG)])
def test_config_inferred_from_t5x_shapes(fixture, config):
  shapes = t5x.T5XCheckpoint(fixture_path(fixture)).shapes()
  inferred = infer.config_from_shapes(
      shapes, relative_attention_max_distance=config.relative_attention_max_distance)
  assert inferred == config


def test_inspect_lists_parameters(capsys):
  assert main_lib.main(["inspect", fixture_path("t5x_tiny_checkpoint")]) == 0
  out = capsys.readouterr().out
  assert "token_embedder/embedding" in out and "(32128, 4)" in out
  assert "format:     msgpack  step: 3" in out


def test_decode_runs_on_real_checkpoint_and_vocabulary():
  # As a user would: the installed console script, in a fresh process.
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.cli.main", "decode", fixture_path("t5x_tiny_checkpoint"),
       "--spm_model", fixture_path("t5_spm.model"), "--input", "The movie was great!",
       "--relative_attention_max_distance", "8", "--max_decode_length", "5"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "input ids:  [37, 1974, 47, 248, 55, 1]" in result.stdout
  out_ids = result.stdout.split("output ids: ")[1].splitlines()[0]
  assert len(eval(out_ids)) <= 5  # noqa: S307 - our own printed list


def test_bad_path_is_a_one_line_error(capsys, tmp_path):
  assert main_lib.main(["inspect", str(tmp_path / "missing")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("prompt-tuning inspect: error: Checkpoint not found") and "\n" not in err


def test_the_binaries_take_grouped_specs_not_loose_values():
  # T5X's habit (issue 30): a handful of objects, each bound once by a run file.
  import inspect
  from prompt_tuning import evaluation
  from prompt_tuning.train import loop
  limits = {loop.train: 12, evaluation.evaluate: 6, evaluation.infer: 6,
            evaluation._predict_split: 6}
  for fn, limit in limits.items():
    assert len(inspect.signature(fn).parameters) <= limit, fn.__name__
  for fn in (evaluation.evaluate, evaluation.infer, evaluation._predict_split):
    assert "inference" in inspect.signature(fn).parameters
  assert "checkpoint" in inspect.signature(loop.train).parameters


def test_a_binding_moved_into_a_spec_is_refused_naming_its_new_name():
  import gin
  from prompt_tuning.cli import gin as gin_utils
  assert gin_utils.MOVED_BINDINGS["train.checkpoint_period"] == "CheckpointSpec.period"
  assert gin_utils.MOVED_BINDINGS["infer.decoding_config"] == "InferenceSpec.decoding"
  try:
    for old, new in gin_utils.MOVED_BINDINGS.items():
      gin.clear_config()
      with pytest.raises(ValueError) as refused:
        gin_utils.parse_gin(bindings=[f"{old} = None"])
      message = str(refused.value)
      assert f"{old} is now {new}" in message and "\n" not in message, message
      gin.clear_config()
      gin_utils.parse_gin(bindings=[f"{new} = None"])  # The new name is a real parameter.
    gin.clear_config()
    with pytest.raises(ValueError, match="doesn't have a parameter named 'no_such_arg'"):
      gin_utils.parse_gin(bindings=["train.no_such_arg = 3"])  # Others: gin's own message.
  finally:
    gin.clear_config()
