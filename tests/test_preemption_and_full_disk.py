"""Reliability, round two (issue 20), through the binaries as a user meets them.

One writer per MODEL_DIR, strict gin bindings, validation before any work,
SIGTERM (preemption), a full disk, a damaged latest checkpoint, quiet logs.
Runs that need their own process (signals, locks, rlimits, log output) are
subprocesses of `python -m prompt_tuning.cli.main`; pure argument checks run
`main()` in-process, with the backbone reader patched to fail, which shows
they happen before it is read.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from prompt_tuning.cli import main as main_lib
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.runtime import faults
from prompt_tuning.runtime import lock as lock_lib
from tests.conftest import REPO_ROOT, fixture_path
from tests.test_binaries import TINY_MODEL_GIN

LENGTHS = "{'inputs': 16, 'targets': 4}"
PROMPT_NPY = "encoder_prompt.prompt.npy"
_FAULT_ENVS = (faults.ENV, faults.DISK_FULL_ENV, faults.SIGTERM_ENV)


def _argv(command, model_dir, model_gin, *extra):
  run_file = {"train": "runs/prompt_finetune.gin", "infer": "runs/prompt_infer.gin",
              "eval": "runs/prompt_eval.gin"}[command]
  return [command, f"--gin_file={model_gin}", f"--gin_file={run_file}",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8", *extra]


def _env(**faults_set):
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  for name in _FAULT_ENVS:
    env.pop(name, None)
  env.update({k: str(v) for k, v in faults_set.items()})
  return env


def _cli(command, model_dir, *extra, model_gin=None, env=None, timeout=600):
  """Runs the binary in a fresh process; returns the CompletedProcess."""
  model_gin = model_gin or os.path.join(os.path.dirname(model_dir), "tiny_model.gin")
  return subprocess.run(
      [sys.executable, "-m", "prompt_tuning.cli.main",
       *_argv(command, model_dir, model_gin, *extra)],
      cwd=REPO_ROOT, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _error_line(stderr):
  """The binary's one error line (exactly one, and no traceback)."""
  lines = [line for line in stderr.splitlines() if line.startswith("prompt-tuning")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


def _prompt(model_dir, step):
  return np.load(os.path.join(model_dir, "prompts", f"step_{step}", PROMPT_NPY))


def _steps(model_dir):
  store = checkpoints_lib.CheckpointStore(str(model_dir))
  try:
    return store.all_steps()
  finally:
    store.close()


def _leftovers(root):
  """Temporary folders or files anywhere under root."""
  return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files
          if "tmp" in n and "orbax" in n or n.endswith(".tmp")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  fixture_path("t5_spm.model")
  root = tmp_path_factory.mktemp("rel2")
  (root / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  return root


@pytest.fixture(scope="module")
def straight(workdir):
  """An uninterrupted 6-step run, checkpoints every 2 steps (the reference)."""
  run = str(workdir / "straight")
  result = _cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2")
  assert result.returncode == 0, result.stderr[-3000:]
  return run


# --- 1. one writer per MODEL_DIR ----------------------------------------------------

def test_second_trainer_on_one_model_dir_exits_2_naming_the_first(workdir):
  run = str(workdir / "shared_dir")
  # A long first run; it is stopped by SIGTERM at the end of the test.
  first = subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.cli.main",
       *_argv("train", run, str(workdir / "tiny_model.gin"), "--gin.TRAIN_STEPS=1000000",
              "--gin.CHECKPOINT_PERIOD=1000000")],
      cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    lock_path = os.path.join(run, lock_lib.LOCK_NAME)
    deadline = time.time() + 300
    while not os.path.exists(lock_path) and first.poll() is None and time.time() < deadline:
      time.sleep(0.5)
    assert first.poll() is None, first.communicate()[1][-3000:]
    holder = json.load(open(lock_path))
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

    second = _cli("train", run, "--gin.TRAIN_STEPS=1000000", "--gin.CHECKPOINT_PERIOD=1000000")
    assert second.returncode == 2
    line = _error_line(second.stderr)
    assert f"MODEL_DIR {run} is in use by another run" in line
    assert f"host {socket.gethostname()}, pid {first.pid}, started {holder['started']}" in line
    assert first.poll() is None  # The first run goes on, its lock untouched.
    assert json.load(open(lock_path))["token"] == holder["token"]
  finally:
    if first.poll() is None:
      first.send_signal(signal.SIGTERM)  # Preemption from outside: save and exit 0.
    _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  assert "Preempted (SIGTERM)" in err
  stopped = int(err.split("Preempted (SIGTERM): finished step ")[1].split(",")[0])
  assert _steps(run) == [stopped]
  assert os.path.exists(os.path.join(run, "prompts", f"step_{stopped}", PROMPT_NPY))
  assert not os.path.exists(os.path.join(run, lock_lib.LOCK_NAME))  # Released on exit.


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(workdir):
  run = workdir / "stale_lock"
  run.mkdir()
  gone = subprocess.Popen(["true"])
  gone.wait()  # A pid that no longer runs.
  (run / lock_lib.LOCK_NAME).write_text(json.dumps(
      dict(host=socket.gethostname(), pid=gone.pid, started="yesterday", token="old")))
  result = _cli("train", str(run), "--gin.TRAIN_STEPS=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Took over the lock" in result.stderr
  assert f"pid {gone.pid} is no longer running" in result.stderr
  assert not (run / lock_lib.LOCK_NAME).exists()


def test_lock_of_another_host_is_kept_until_it_goes_stale(tmp_path):
  path = tmp_path / lock_lib.LOCK_NAME
  path.write_text(json.dumps(dict(host="tpu-vm-7", pid=1, started="then", token="x")))
  with pytest.raises(lock_lib.RunLockedError, match="host tpu-vm-7, pid 1, started then"):
    lock_lib.RunLock(str(tmp_path), stale_after_s=60).acquire()
  old = time.time() - 120  # Not refreshed for two minutes: its host is gone.
  os.utime(path, (old, old))
  lock = lock_lib.RunLock(str(tmp_path), stale_after_s=60).acquire()
  assert json.load(open(path))["pid"] == os.getpid()
  # While held, the heartbeat keeps the file fresh for other hosts.
  lock.release()
  assert not path.exists()


# --- 2. strict bindings -----------------------------------------------------------

@pytest.fixture
def main_in_process(workdir, tmp_path, capsys, monkeypatch):
  """Runs main() in-process with the backbone reader made to fail if it is reached."""
  from prompt_tuning import readers

  def must_not_read(*args, **kwargs):
    raise AssertionError("the backbone was read before the arguments were checked")
  monkeypatch.setattr(readers, "load_params", must_not_read)

  def _run(*extra, command="train", model_gin=str(workdir / "tiny_model.gin")):
    gin.clear_config()
    capsys.readouterr()
    steps = ["--gin.TRAIN_STEPS=2"] if command == "train" else []
    code = main_lib.main(_argv(command, str(tmp_path / "model_dir"), model_gin, *steps,
                               *extra))
    gin.clear_config()
    return code, capsys.readouterr().err
  return _run


def test_misspelled_macro_is_an_error_naming_the_close_name(main_in_process, tmp_path):
  code, err = main_in_process("--gin.TRAIN_STEPZ=3")
  assert code == 2
  line = _error_line(err)
  assert "TRAIN_STEPZ (--gin.TRAIN_STEPZ=3) is not used; did you mean TRAIN_STEPS?" in line
  assert "--gin.allow_unused=True" in line
  assert not (tmp_path / "model_dir").exists()  # Nothing ran.


def test_unused_binding_in_a_user_gin_file_names_file_and_line(main_in_process, tmp_path,
                                                                workdir):
  user = tmp_path / "my_run.gin"
  user.write_text(f"include '{workdir / 'tiny_model.gin'}'\n"
                  "CHECKPOINT_PERIODS = 5\n"
                  "DecodingConfig.top_k = 3\n")  # Train never decodes.
  code, err = main_in_process(model_gin=str(user))
  assert code == 2
  line = _error_line(err)
  assert "CHECKPOINT_PERIODS (my_run.gin:2) is not used; did you mean CHECKPOINT_PERIOD?" in line
  assert "DecodingConfig.top_k (my_run.gin:3) is not used" in line


def test_allow_unused_turns_the_error_into_a_warning(workdir, tmp_path):
  result = _cli("train", str(tmp_path / "run"), "--gin.TRAIN_STEPS=1", "--gin.TRAIN_STEPZ=3",
                "--gin.allow_unused=True", model_gin=str(workdir / "tiny_model.gin"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "WARNING Unused gin bindings" in result.stderr and "TRAIN_STEPZ" in result.stderr
  assert _steps(tmp_path / "run") == [1]


def test_every_binding_the_bundled_runs_make_is_read(main_in_process, monkeypatch):
  # The bundled files with a user's usual flags pass the check (it is not
  # simply rejecting everything): stop right after it, at the task lookup.
  from prompt_tuning.cli import gin as gin_utils
  monkeypatch.setattr(gin_utils, "run_configured", lambda name: "checked")
  for command, flags in (("train", ("--gin.CHECKPOINT_PERIOD=2", "--gin.CheckpointSpec.keep=3",
                                     "--gin.LossSpec.z_loss=0.0", "--gin.DropoutSpec.enabled=False",
                                     "--gin.ReportSpec.frozen_digest=True",
                                     "--gin.ChecksSpec.on_non_finite='skip'")),
                         ("infer", ("--gin.CHECKPOINT_STEP=None",
                                    "--gin.InferenceSpec.max_examples=3")),
                         ("eval", ("--gin.EVAL_SPLIT='validation'",
                                   "--gin.InferenceSpec.ensemble_method='mean_log_prob'"))):
    code, err = main_in_process(*flags, command=command)
    assert code == 0, (command, err[-2000:])
  # The same flag where nothing reads it (train has no CHECKPOINT_STEP) is refused.
  code, err = main_in_process("--gin.CHECKPOINT_STEP=3")
  assert code == 2 and "CHECKPOINT_STEP (--gin.CHECKPOINT_STEP=3) is not used" in err
  # So is a spec the binary does not take, on the command line.
  code, err = main_in_process("--gin.InferenceSpec.max_examples=3")
  assert code == 2 and "InferenceSpec.max_examples (--gin.InferenceSpec.max_examples=3) " \
      "is not used" in err
  code, err = main_in_process("--gin.CheckpointSpec.keep=3", command="eval")
  assert code == 2 and "CheckpointSpec.keep (--gin.CheckpointSpec.keep=3) is not used" in err


def test_a_binding_from_before_the_specs_is_one_line_naming_the_new_one(main_in_process,
                                                                        tmp_path):
  code, err = main_in_process("--gin.train.checkpoint_period=2")
  assert code == 2
  assert "train.checkpoint_period is now CheckpointSpec.period" in _error_line(err)
  user = tmp_path / "old_eval.gin"
  user.write_text("evaluate.max_examples = 5\n")
  code, err = main_in_process(f"--gin_file={user}", command="eval")
  assert code == 2
  line = _error_line(err)
  assert "evaluate.max_examples is now InferenceSpec.max_examples" in line
  assert "old_eval.gin" in line and "line 1" in line
  assert not (tmp_path / "model_dir").exists()  # Nothing ran.


def test_a_shared_user_file_may_bind_the_specs_of_other_binaries(main_in_process, tmp_path,
                                                                 monkeypatch):
  # T5X's habit: one gin file for train, eval and infer. What the other binaries'
  # specs read is not a typo there, even though this run binds no such spec.
  from prompt_tuning.cli import gin as gin_utils
  monkeypatch.setattr(gin_utils, "run_configured", lambda name: "checked")
  shared = tmp_path / "shared.gin"
  shared.write_text("CheckpointSpec.keep = 3\nInferenceSpec.max_examples = 5\n")
  for command in ("train", "eval", "infer"):
    code, err = main_in_process(f"--gin_file={shared}", command=command)
    assert code == 0, (command, err[-2000:])
  shared.write_text("InferenceSpec.max_exampels = 5\n")  # A typo stays an error.
  code, err = main_in_process(f"--gin_file={shared}", command="eval")
  assert code == 2


# --- 3. validation before work ------------------------------------------------------

def test_zero_prompt_length_is_refused_before_any_work(main_in_process, tmp_path):
  code, err = main_in_process("--gin.PROMPT_LENGTH=0")
  assert code == 2
  line = _error_line(err)
  assert "PROMPT_LENGTH (encoder prompt SoftPrompt.length) must be a positive integer; " \
         "got 0" in line
  assert not (tmp_path / "model_dir").exists()
  assert _leftovers(tmp_path) == []


def test_every_bad_size_is_named_in_one_line(main_in_process):
  code, err = main_in_process("--gin.BATCH_SIZE=0", "--gin.CHECKPOINT_PERIOD=-1",
                              "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 4}")
  assert code == 2
  line = _error_line(err)
  for expected in ("BATCH_SIZE must be a positive integer; got 0",
                   "CHECKPOINT_PERIOD must be a positive integer; got -1",
                   "TASK_FEATURE_LENGTHS['inputs'] must be a positive integer; got 0"):
    assert expected in line
  code, err = main_in_process("--gin.TRAIN_STEPS=0")
  assert code == 2 and "TRAIN_STEPS must be a positive integer; got 0" in _error_line(err)


def test_infer_refuses_bad_sampling_ranges_and_prompt_counts(main_in_process):
  code, err = main_in_process("--gin_file=decoding/nucleus_sampling.gin",
                              "--gin.DecodingConfig.top_p=1.5", "--gin.DecodingConfig.top_k=-2",
                              command="infer")
  assert code == 2
  line = _error_line(err)
  assert "DecodingConfig.top_p must be in [0, 1]" in line and "got 1.5" in line
  assert "DecodingConfig.top_k must be an integer >= 0" in line and "got -2" in line
  code, err = main_in_process("--gin_file=prompts/multi_task.gin", "--gin.NUM_TASKS=0")
  assert code == 2
  assert "the number of tasks (encoder prompt MultiTaskPrompt.num_tasks) must be a positive " \
         "integer; got 0" in _error_line(err)


# --- 4. preemption ------------------------------------------------------------------

def test_sigterm_saves_exports_exits_0_and_resume_is_bitwise_identical(workdir, straight):
  run = str(workdir / "preempted")
  result = _cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2",
                env=_env(**{faults.SIGTERM_ENV: 3}))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Preempted (SIGTERM): finished step 3, saved its checkpoint and exported the prompt; " \
         "exiting 0" in result.stderr
  assert _steps(run) == [2, 3]  # Step 3 is not a period step: saved for the preemption.
  assert os.path.exists(os.path.join(run, "prompts", "step_3", PROMPT_NPY))
  result = _cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from step 3" in result.stderr
  for step in (2, 4, 6):
    assert _prompt(run, step).tobytes() == _prompt(straight, step).tobytes(), step


# --- 5. a full disk -------------------------------------------------------------------

def test_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint(workdir, straight):
  run = str(workdir / "full_disk")
  result = _cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2",
                env=_env(**{faults.DISK_FULL_ENV: 4}))
  assert result.returncode == 2, result.stderr[-3000:]
  line = _error_line(result.stderr)
  assert "Saving checkpoint step 4 failed for lack of space" in line
  assert "the latest checkpoint is still step 2" in line
  # No partial step anywhere, and step 2 is the latest and restorable.
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2"]
  assert _leftovers(run) == []
  assert _steps(run) == [2]
  assert not os.path.exists(os.path.join(run, lock_lib.LOCK_NAME))
  # With space again, the same command resumes and ends where the straight run does.
  result = _cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from step 2" in result.stderr
  assert _prompt(run, 6).tobytes() == _prompt(straight, 6).tobytes()


# --- 6. a damaged latest checkpoint ---------------------------------------------------

def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def test_damaged_latest_checkpoint_is_named_then_fallback_resumes(workdir, straight):
  run = str(workdir / "damaged")
  shutil.copytree(straight, run)
  assert len(_steps(run)) >= 2  # Kept by default, so that there is one to fall back to.
  victim = _largest_file(os.path.join(run, "checkpoints", "6"))
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:
    f.truncate(size // 2)
  result = _cli("train", run, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_PERIOD=2")
  assert result.returncode == 2
  line = _error_line(result.stderr)
  assert f"Checkpoint step 6 is damaged: {victim} is truncated ({size // 2} of {size} bytes)" \
         in line
  assert "--gin.CheckpointSpec.restore_fallback=True to resume from step 4" in line
  assert _steps(run) == [2, 4, 6]  # Refusing changed nothing.

  result = _cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2",
                "--gin.CheckpointSpec.restore_fallback=True")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Checkpoint step 6 is damaged" in result.stderr
  assert "Resumed from step 4" in result.stderr
  assert os.path.isdir(os.path.join(run, checkpoints_lib.DAMAGED, "6"))  # Kept, not deleted.
  assert _steps(run) == [2, 4, 6]
  assert _prompt(run, 6).tobytes() == _prompt(straight, 6).tobytes()


def test_a_deleted_file_is_named(workdir, straight, tmp_path):
  run = str(tmp_path / "deleted")
  shutil.copytree(straight, run)
  victim = _largest_file(os.path.join(run, "checkpoints", "6", "trainable"))
  os.remove(victim)
  store = checkpoints_lib.CheckpointStore(run)
  try:
    with pytest.raises(checkpoints_lib.DamagedCheckpointError, match=f"{victim} is missing"):
      store.restore(None, None)
    assert store.damage(4) is None
  finally:
    store.close()


# --- 7. quiet by default ------------------------------------------------------------

def test_infer_is_quiet_by_default_and_verbose_on_request(workdir, straight):
  quiet = _cli("infer", straight, "--gin.MAX_INFER_EXAMPLES=4")
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert quiet.stdout.strip().endswith(".jsonl")
  orbax_lines = [line for line in quiet.stderr.splitlines() if "[process=0]" in line
                 or " INFO " in line and "orbax" in line.lower()]
  assert orbax_lines == []
  verbose = _cli("infer", straight, "--gin.MAX_INFER_EXAMPLES=4", "--verbose")
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert sum("[process=0]" in line for line in verbose.stderr.splitlines()) >= 3
  assert len(quiet.stderr.splitlines()) < len(verbose.stderr.splitlines()) // 2


# --- 8. eval / infer do not initialize a prompt they restore -----------------------------

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
    result = subprocess.run(argv, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (command, result.stderr[-3000:])
  assert "first_n" not in result.stderr
  assert result.stdout.strip().endswith(".jsonl")
