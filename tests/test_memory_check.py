"""The memory check before any work (issue 32): what the bad-input catalog cannot show.

The catalog (tests/test_bad_inputs.py) runs every refusal through the binary. Here:
that a run which fits passes the memory check and that ALLOW_OVERSUBSCRIBE lets a big
one through; the decision and the estimate on their own (with a small made-up
"available" instead of allocating). Another run's MODEL_DIR and a superseded OCDBT
file are in tests/test_checkpoint_damage.py; the lock's folder cleanup in
tests/test_run_lock.py.
"""

import logging

import gin
import pytest

from prompt_tuning.cli import main as main_lib
from prompt_tuning.prompts import soft
from prompt_tuning.runtime import memory
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime.specs import ModelSpec
from prompt_tuning.train import optimizers
from tests.conftest import TINY_T5X_CONFIG, fixture_path
from tests.test_binaries import TINY_MODEL_GIN


class _BackboneRead(Exception):
  """Raised where the backbone's arrays would be read: the checks before it passed."""


@pytest.fixture
def binary(tmp_path, capsys, monkeypatch):
  """Runs `prompt-tuning` in-process, stopping where the backbone's arrays would be read."""
  from prompt_tuning import readers
  fixture_path("t5_spm.model")
  (tmp_path / "tiny_model.gin").write_text(TINY_MODEL_GIN)

  def stop(*args, **kwargs):
    raise _BackboneRead()
  monkeypatch.setattr(readers, "load_params", stop)

  def _run(*extra, command="train"):
    run_file = {"train": "runs/prompt_finetune.gin", "eval": "runs/prompt_eval.gin"}[command]
    argv = [command, f"--gin_file={tmp_path / 'tiny_model.gin'}", f"--gin_file={run_file}",
            f"--gin.MODEL_DIR='{tmp_path / 'model_dir'}'",
            "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", "--gin.BATCH_SIZE=4",
            *(["--gin.TRAIN_STEPS=1"] if command == "train" else []), *extra]
    gin.clear_config()
    capsys.readouterr()
    try:
      code = main_lib.main(argv)
    except _BackboneRead:
      code = "read"
    finally:
      gin.clear_config()
    return code, capsys.readouterr().err
  return _run


def test_a_run_that_fits_passes_and_allow_oversubscribe_lets_a_big_one_through(
    binary, tmp_path, caplog):
  code, err = binary()
  assert code == "read", err  # Past the memory check, on to the backbone.
  code, err = binary("--gin.PROMPT_LENGTH=100000")
  assert code == 2 and "needs about" in err, err
  assert not (tmp_path / "model_dir").exists()
  with caplog.at_level(logging.WARNING):
    code, err = binary("--gin.PROMPT_LENGTH=100000", "--gin.ALLOW_OVERSUBSCRIBE=True")
  assert code == "read", err
  warned = [r.getMessage() for r in caplog.records if "needs about" in r.getMessage()]
  assert warned and "Going ahead (allowed by --gin.ALLOW_OVERSUBSCRIBE=True)" in warned[0]
  # Eval too.
  code, err = binary("--gin.PROMPT_LENGTH=100000", "--gin.RESTORE_CHECKPOINT=False",
                     "--gin.ALLOW_OVERSUBSCRIBE=True", command="eval")
  assert code == "read", err
  # The run that fitted is refused where much less is available.
  code, err = binary("--gin.MemoryCheck.available_bytes=1000")
  assert code == 2, err
  line = [x for x in err.splitlines() if x.startswith("prompt-tuning")][0]
  assert "but 1000 B is available (MemoryCheck.available_bytes)" in line, line


def test_serve_allow_oversubscribe_passes_the_check(monkeypatch):
  from prompt_tuning.serving import cli as serving_cli
  from prompt_tuning.serving import engine as engine_lib

  def stop(*args, **kwargs):
    raise _BackboneRead()
  monkeypatch.setattr(engine_lib, "load_backbone", stop)
  argv = ["serve", fixture_path("t5x_tiny_checkpoint"), "--prompt_length=100000",
          "--no_warmup"]
  with pytest.raises(memory.InsufficientMemoryError, match="--allow_oversubscribe"):
    serving_cli.build(main_lib.build_parser().parse_args(argv))
  with pytest.raises(_BackboneRead):
    serving_cli.build(main_lib.build_parser().parse_args(argv + ["--allow_oversubscribe"]))


def _estimate(prompt_length, **config):
  spec = ModelSpec(TINY_T5X_CONFIG.replace(**config), None, soft.SoftPrompt(length=prompt_length))
  setup = model_setup.abstract(spec)
  import jax
  opt_state = jax.eval_shape(optimizers.prompt_tuning_adafactor().init, setup.trainable)
  return memory.train_estimate(setup, opt_state, 4, {"inputs": 16, "targets": 4},
                               dropout=config.get("dropout_rate", 0) > 0)


def test_the_decision_gives_both_figures_and_the_settings(caplog):
  estimate = _estimate(100000, attention_example_loop=True)
  small = memory.Available(2 ** 30, "host RAM, MemAvailable")
  with pytest.raises(memory.InsufficientMemoryError) as refused:
    memory.decide(estimate, small, allow_oversubscribe=False, what="train step")
  text = str(refused.value)
  assert f"needs about {memory.human(estimate.total)}" in text
  assert "but 1 GiB is available (host RAM, MemAvailable)" in text
  assert "BATCH_SIZE 4 x encoder length 100016 (inputs 16 + PROMPT_LENGTH 100000) x targets 4" \
      in text
  assert "activations" in text and "--gin.ALLOW_OVERSUBSCRIBE=True" in text
  with caplog.at_level(logging.WARNING):
    memory.decide(estimate, small, allow_oversubscribe=True, what="train step")
  assert any("Going ahead" in r.getMessage() for r in caplog.records)
  memory.decide(_estimate(4), small, allow_oversubscribe=False, what="train step")  # Fits.


def test_the_estimate_follows_the_settings():
  normal, huge = _estimate(4), _estimate(100000, attention_example_loop=True)
  assert normal.total < 64 * 2 ** 20 < 100 * 2 ** 30 < huge.total
  assert huge.parts["activations"] > 0.99 * huge.total  # The attention scores dominate.
  # Recomputing layers, or attention one example at a time, needs less.
  plain = _estimate(1000, attention_example_loop=False)
  assert _estimate(1000, attention_example_loop=False, remat_policy="full").total < plain.total
  assert _estimate(1000, attention_example_loop=True).total < plain.total
  assert _estimate(1000, attention_example_loop=False, dropout_rate=0.1).total > plain.total
  host = memory.host_available()
  assert host.bytes > 0 and host.where
