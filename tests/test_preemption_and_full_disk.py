"""Preemption and a full disk, through the binary in a fresh process: a SIGTERM saves,
exports and exits 0; a full disk stops with one line and keeps the previous checkpoint;
both resume bitwise identical to an uninterrupted run (the shared `straight` run).
"""

import os

from prompt_tuning.runtime import faults
from prompt_tuning.runtime import lock as lock_lib
from tests.conftest import (PROMPT_NPY, checkpoint_steps, cli_env, error_line,
                            exported_prompt, leftovers, run_cli)


# --- preemption ------------------------------------------------------------------

def test_sigterm_saves_exports_exits_0_and_resume_is_bitwise_identical(workdir, straight):
  run = str(workdir / "preempted")
  result = run_cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2",
                   env=cli_env(**{faults.SIGTERM_ENV: 3}))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Preempted (SIGTERM): finished step 3, saved its checkpoint and exported the prompt; " \
         "exiting 0" in result.stderr
  assert checkpoint_steps(run) == [2, 3]  # Step 3 is not a period step: saved for the preemption.
  assert os.path.exists(os.path.join(run, "prompts", "step_3", PROMPT_NPY))
  result = run_cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from step 3" in result.stderr
  for step in (2, 4, 6):
    assert exported_prompt(run, step).tobytes() == exported_prompt(straight, step).tobytes(), step


# --- a full disk -------------------------------------------------------------------

def test_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint(workdir, straight):
  run = str(workdir / "full_disk")
  result = run_cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2",
                   env=cli_env(**{faults.DISK_FULL_ENV: 4}))
  assert result.returncode == 2, result.stderr[-3000:]
  line = error_line(result.stderr)
  assert "Saving checkpoint step 4 failed for lack of space" in line
  assert "the latest checkpoint is still step 2" in line
  # No partial step anywhere, and step 2 is the latest and restorable.
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2"]
  assert leftovers(run) == []
  assert checkpoint_steps(run) == [2]
  assert not os.path.exists(os.path.join(run, lock_lib.LOCK_NAME))
  # With space again, the same command resumes and ends where the straight run does.
  result = run_cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from step 2" in result.stderr
  assert exported_prompt(run, 6).tobytes() == exported_prompt(straight, 6).tobytes()


# --- TensorStore's late callbacks after a failed save ----------------------------

def _closed_loop_error():
  """The RuntimeError a TensorStore thread gets from a closed loop, with the traceback
  such a thread has: its outermost Python frame is call_soon_threadsafe."""
  import asyncio
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(lambda: None)
  except RuntimeError as e:
    return e, e.__traceback__.tb_next  # Drop this frame: a C++ thread has none.
  raise AssertionError("a closed loop accepted a callback")


def _unraisable_args(error, tb):
  """sys.UnraisableHookArgs (not constructible by name) as PyErr_WriteUnraisable makes it."""
  import sys
  seen = []
  class Failing:
    def __del__(self):
      raise ValueError("only to learn the type")
  previous, sys.unraisablehook = sys.unraisablehook, seen.append
  try:
    Failing()
  finally:
    sys.unraisablehook = previous
  return type(seen[0])((type(error), error, tb, None, None))


def test_closed_loop_callbacks_print_nothing_through_either_hook(monkeypatch, capsys):
  # CI printed these tracebacks after the one-line error of a full disk: TensorStore
  # reports them through sys.unraisablehook as well as through sys.excepthook.
  import sys
  from prompt_tuning.runtime import background
  monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
  monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
  background.drop_closed_loop_callbacks()
  error, tb = _closed_loop_error()
  sys.excepthook(RuntimeError, error, tb)
  sys.unraisablehook(_unraisable_args(error, tb))
  assert capsys.readouterr().err == ""
  # Anything else still prints, through both.
  other = ValueError("a real failure")
  sys.excepthook(ValueError, other, None)
  sys.unraisablehook(_unraisable_args(other, None))
  assert capsys.readouterr().err.count("a real failure") == 2
