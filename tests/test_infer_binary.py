"""The infer binary's output: quiet by default, and no prompt initializer run for a prompt
it restores."""

import shutil
import subprocess
import sys

import gin
import numpy as np

from prompt_tuning.cli import main as main_lib
from tests.conftest import REPO_ROOT, cli_env, run_cli


# --- quiet by default ------------------------------------------------------------

def test_infer_is_quiet_by_default_and_verbose_on_request(workdir, straight, tmp_path):
  run = str(tmp_path / "run")  # Infer writes into MODEL_DIR: the shared run stays as it is.
  shutil.copytree(straight, run)
  model_gin = str(workdir / "tiny_model.gin")
  quiet = run_cli("infer", run, "--gin.MAX_INFER_EXAMPLES=4", model_gin=model_gin)
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert quiet.stdout.strip().endswith(".jsonl")
  orbax_lines = [line for line in quiet.stderr.splitlines() if "[process=0]" in line
                 or " INFO " in line and "orbax" in line.lower()]
  assert orbax_lines == []
  verbose = run_cli("infer", run, "--gin.MAX_INFER_EXAMPLES=4", "--verbose",
                    model_gin=model_gin)
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert sum("[process=0]" in line for line in verbose.stderr.splitlines()) >= 3
  assert len(quiet.stderr.splitlines()) < len(verbose.stderr.splitlines()) // 2


# --- eval / infer do not initialize a prompt they restore -----------------------------

def test_infer_on_the_byte_backbone_does_not_run_the_prompt_initializer(tmp_path):
  import jax
  import orbax.checkpoint as ocp
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.cli import gin as gin_utils
  # A random backbone with the synthetic models' 384-row byte vocabulary.
  config = gin_utils.model_config_from_gin(["models/synthetic_tiny.gin"])
  gin.clear_config()
  params = params_lib.init_params(T5(config), jax.random.PRNGKey(0))
  backbone = tmp_path / "backbone" / "checkpoint_0"
  ocp.PyTreeCheckpointer().save(str(backbone), {"target": jax.device_get(params),
                                                "state": {"step": np.int32(0)}})
  common = ["--gin.MIXTURE_OR_TASK_NAME='synthetic_reverse_bare'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{backbone}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}", "--gin.BATCH_SIZE=4"]
  trained = tmp_path / "train.gin"
  trained.write_text("include 'models/synthetic_tiny.gin'\ninclude 'prompts/soft_prompt.gin'\n"
                     "include 'prompts/random_uniform.gin'\nPROMPT_LENGTH = 4\n")
  run = str(tmp_path / "run")
  for command, model_gin, extra in (
      ("train", trained, ["--gin.TRAIN_STEPS=1"]),
      # The user's infer config keeps the default sampled-vocabulary initializer,
      # whose first_n=5000 does not fit 384 rows; the prompt comes from the checkpoint.
      ("infer", "models/synthetic_tiny.gin", ["--gin_file=prompts/soft_prompt.gin",
                                              "--gin.PROMPT_LENGTH=4",
                                              "--gin.MAX_INFER_EXAMPLES=2"])):
    argv = [sys.executable, "-m", "prompt_tuning.cli.main", command,
            f"--gin_file={model_gin}",
            f"--gin_file=runs/{'prompt_finetune' if command == 'train' else 'prompt_infer'}.gin",
            f"--gin.MODEL_DIR='{run}'", *common, *extra]
    if command == "train":  # Only the exit code counts here: no fresh process needed.
      gin.clear_config()
      try:
        assert main_lib.main(argv[3:]) == 0, command
      finally:
        gin.clear_config()
      continue
    result = subprocess.run(argv, cwd=REPO_ROOT, env=cli_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (command, result.stderr[-3000:])
  assert "first_n" not in result.stderr
  assert result.stdout.strip().endswith(".jsonl")
