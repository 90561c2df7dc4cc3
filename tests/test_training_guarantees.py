"""Training guarantees: determinism, kill-anywhere resume, non-finite steps, integrity,
no pickle."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, ModelSpec
from prompt_tuning import trees as tree_lib
from prompt_tuning.prompts import initializers, soft
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.train import loop
from prompt_tuning.train.specs import ChecksSpec, ReportSpec
from prompt_tuning.runtime import faults, setup as model_setup
from tests.conftest import REPO_ROOT, TINY_T5X_CONFIG, files_digest, fixture_path
from tests.test_binaries import TINY_MODEL_GIN

LENGTHS = {"inputs": 16, "targets": 4}
PROMPT_NPY = "encoder_prompt.prompt.npy"


def _train(model_dir, steps=6, seed=0, optimizer=None, report=ReportSpec(progress=False),
           **kwargs):
  import tests.tiny_tasks  # noqa: F401
  ckpt = fixture_path("t5x_tiny_checkpoint")
  prompt = soft.SoftPrompt(length=4, init=initializers.sampled_vocab(seed=seed))
  return loop.train(model_dir=str(model_dir), model=ModelSpec(TINY_T5X_CONFIG, ckpt, prompt),
                    data=DataSpec("pt_test_sentiment", LENGTHS, 8, seed=seed),
                    train_steps=steps, checkpoint=CheckpointSpec(period=2), seed=seed,
                    optimizer=optimizer, report=report, **kwargs)


def _prompt(model_dir, step):
  return np.load(os.path.join(model_dir, "prompts", f"step_{step}", PROMPT_NPY))


def test_same_seed_and_data_give_bitwise_identical_prompts(tmp_path):
  _train(tmp_path / "a")
  _train(tmp_path / "b")
  _train(tmp_path / "c", seed=1)
  a, b, c = (_prompt(tmp_path / x, 6) for x in "abc")
  assert a.tobytes() == b.tobytes()
  assert a.tobytes() != c.tobytes()


# --- kill anywhere -------------------------------------------------------------

def _cli_train(model_dir, fault=None, steps=8, extra=()):
  """`python -m prompt_tuning.train` on the tiny run in `model_dir` (with a fault point)."""
  env = dict(os.environ)
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  gin_file = os.path.join(os.path.dirname(model_dir), "tiny_model.gin")
  return subprocess.run(
      [sys.executable, "-m", "prompt_tuning.train", f"--gin_file={gin_file}",
       "--gin_file=runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
       "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
       f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
       f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8",
       f"--gin.TRAIN_STEPS={steps}", "--gin.CHECKPOINT_PERIOD=2", *extra],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_sigkill_anywhere_then_resume_equals_uninterrupted_run(straight, tmp_path):
  # The uninterrupted reference is the session's `straight` run (conftest.py): the same
  # flags (6 steps, checkpoints every 2), trained by a binary process of its own, as the
  # killed runs are (in a pytest worker the prompts differed bitwise).
  (tmp_path / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  run = str(tmp_path / "killed")
  ckpts = os.path.join(run, "checkpoints")
  # 1. Killed right after dispatching step 3: only step 2 is saved.
  result = _cli_train(run, "after_step:3", steps=6)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert sorted(os.listdir(ckpts)) == ["2"]
  # 2. Killed while Orbax writes step 4: the partial folder is not a checkpoint.
  result = _cli_train(run, "during_save:4", steps=6)
  assert result.returncode == -signal.SIGKILL
  store = checkpoints_lib.CheckpointStore(run)
  assert store.latest_step() == 2 and store.all_steps() == [2]
  store.close()
  assert any(name.startswith("4") and name != "4" for name in os.listdir(ckpts))
  # 3. Killed after step 4 is committed, before its prompt is exported.
  result = _cli_train(run, "before_export:4", steps=6)
  assert result.returncode == -signal.SIGKILL
  assert "4" in os.listdir(ckpts)
  assert not os.path.exists(os.path.join(run, "prompts", "step_4"))
  # 4. A clean resume trains steps 5 and 6; every prompt equals the uninterrupted run's,
  # step 4's (exported by the resume) too.
  result = _cli_train(run, steps=6)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Resumed from step 4" in result.stderr
  for step in (2, 4, 6):
    assert _prompt(run, step).tobytes() == _prompt(straight, step).tobytes(), step


# --- non-finite steps ------------------------------------------------------------

def _poison_at(step_number):
  """An optimizer whose update is NaN at one step (counted from 1)."""
  inner = optax.sgd(0.1)

  def init(params):
    return (jnp.zeros([], jnp.int32), inner.init(params))

  def update(grads, state, params=None):
    count, inner_state = state
    updates, inner_state = inner.update(grads, inner_state, params)
    bad = count + 1 == step_number
    updates = jax.tree.map(lambda u: jnp.where(bad, jnp.nan, u), updates)
    return updates, (count + 1, inner_state)
  return optax.GradientTransformation(init, update)


def test_non_finite_update_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
  with pytest.raises(loop.NonFiniteLossError, match="Non-finite update norm nan at step 3"):
    _train(tmp_path, steps=6, optimizer=_poison_at(3))
  store = checkpoints_lib.CheckpointStore(str(tmp_path))
  assert store.all_steps() == [2]
  store.close()
  assert np.all(np.isfinite(_prompt(tmp_path, 2)))


def test_non_finite_step_can_be_skipped(tmp_path, monkeypatch):
  # A NaN loss weight in the third batch gives a NaN loss at step 3 only.
  real = loop.data_lib.train_batches

  def poisoned(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs)):
      if i == 2:
        batch = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"] * np.nan)
      yield batch
  monkeypatch.setattr(loop.data_lib, "train_batches", poisoned)
  summary = _train(tmp_path / "skip", steps=6, checks=ChecksSpec(on_non_finite="skip"))
  assert summary["skipped_steps"] == [3]
  final = _prompt(tmp_path / "skip", 6)
  assert np.all(np.isfinite(final))
  assert not np.array_equal(final, _prompt(tmp_path / "skip", 2))


# --- integrity -------------------------------------------------------------------

def _binary(command, model_dir, *extra):
  """Runs `prompt-tuning eval|infer` on MODEL_DIR's checkpoint, as a user would."""
  import gin
  from prompt_tuning.cli import main as main_lib
  model_gin = os.path.join(os.path.dirname(str(model_dir)), "tiny_model.gin")
  with open(model_gin, "w") as f:
    f.write(TINY_MODEL_GIN)
  gin.clear_config()
  try:
    return main_lib.main([
        command, f"--gin_file={model_gin}", f"--gin_file=runs/prompt_{command}.gin",
        f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=4",
        f"--gin.MAX_{command.upper()}_EXAMPLES=6", "--gin.DecodingConfig.max_decode_length=4",
        *extra])
  finally:
    gin.clear_config()


def test_backbone_unchanged_by_train_eval_and_infer(tmp_path):
  """Train, then the eval and infer binaries on the checkpoint on disk: the backbone's
  files hash the same throughout, and so do the trained checkpoint's files (eval and
  infer only read them); the backbone in memory is bit-identical to the checkpoint."""
  ckpt = fixture_path("t5x_tiny_checkpoint")
  backbone_files = files_digest(ckpt)
  run = tmp_path / "run"
  summary = _train(run, steps=2, report=ReportSpec(progress=False, frozen_digest=True))
  assert files_digest(ckpt) == backbone_files
  setup = model_setup.build(ModelSpec(TINY_T5X_CONFIG, ckpt, soft.SoftPrompt(length=4)))
  assert summary["frozen_sha256"] == tree_lib.tree_digest(setup.frozen)
  from prompt_tuning import layout
  checkpoints = layout.checkpoints_dir(str(run))
  trained = files_digest(checkpoints)
  # The prompt arrays; their provenance sidecars are meant to gain eval's metrics.
  prompts = files_digest(str(run / "prompts"), suffix=".npy")
  assert _binary("eval", run) == 0
  assert _binary("eval", run, "--gin_file=decoding/beam_search.gin") == 0
  assert _binary("infer", run) == 0
  assert os.path.exists(run / "eval" / "metrics.jsonl")
  assert os.path.exists(run / "infer" / "pt_test_sentiment-validation-step_2.jsonl")
  assert files_digest(ckpt) == backbone_files
  assert files_digest(checkpoints) == trained
  assert files_digest(str(run / "prompts"), suffix=".npy") == prompts
  sidecar = json.loads((run / "prompts" / "step_2" /
                        "encoder_prompt.prompt.provenance.json").read_text())
  assert sidecar.get("metrics"), sidecar


def test_prompt_export_never_overwrites_a_different_file(tmp_path):
  first = {"encoder_prompt": {"prompt": np.ones((2, 3), np.float32)}}
  checkpoints_lib.export_prompts(str(tmp_path), 5, first)
  checkpoints_lib.export_prompts(str(tmp_path), 5, first)  # the same content: fine
  other = {"encoder_prompt": {"prompt": np.zeros((2, 3), np.float32)}}
  with pytest.raises(FileExistsError, match="Refusing to overwrite"):
    checkpoints_lib.export_prompts(str(tmp_path), 5, other)
  np.testing.assert_array_equal(_prompt(tmp_path, 5), first["encoder_prompt"]["prompt"])


# --- security --------------------------------------------------------------------

def test_no_pickle_anywhere_in_the_library():
  pattern = re.compile(r"allow_pickle\s*=\s*True|import pickle|pickle\.load|torch\.load|"
                       r"cloudpickle|dill\.load|joblib\.load")
  offenders = []
  for folder in ("prompt_tuning", "tasks"):
    for root, _, files in os.walk(os.path.join(REPO_ROOT, folder)):
      for name in files:
        if name.endswith(".py"):
          text = open(os.path.join(root, name)).read()
          offenders += [f"{name}: {m}" for m in pattern.findall(text)]
  assert offenders == []
  np_loads = []
  for root, _, files in os.walk(os.path.join(REPO_ROOT, "prompt_tuning")):
    for name in files:
      if name.endswith(".py"):
        for line in open(os.path.join(root, name)):
          if "np.load(" in line and "allow_pickle=False" not in line:
            np_loads.append(f"{name}: {line.strip()}")
  assert np_loads == []
