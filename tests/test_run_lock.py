"""One writer per MODEL_DIR: the run lock, as the binary and the library meet it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from prompt_tuning.runtime import lock as lock_lib
from tests.conftest import (PROMPT_NPY, REPO_ROOT, checkpoint_steps, cli_argv, cli_env,
                            error_line)


def test_second_trainer_on_one_model_dir_exits_2_naming_the_first(workdir, cli_in_process):
  run = str(workdir / "shared_dir")
  # A long first run; it is stopped by SIGTERM at the end of the test.
  first = subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.cli.main",
       *cli_argv("train", run, str(workdir / "tiny_model.gin"), "--gin.TRAIN_STEPS=1000000",
                 "--gin.CHECKPOINT_PERIOD=1000000")],
      cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    lock_path = os.path.join(run, lock_lib.LOCK_NAME)
    deadline = time.time() + 300
    while not os.path.exists(lock_path) and first.poll() is None and time.time() < deadline:
      time.sleep(0.5)
    assert first.poll() is None, first.communicate()[1][-3000:]
    # Wait until it trains (its first metrics make train/): SIGTERM before its
    # preemption handler is installed would end it with the default action.
    while (not os.path.exists(os.path.join(run, "train")) and first.poll() is None
           and time.time() < deadline):
      time.sleep(0.5)
    holder = json.load(open(lock_path))
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

    # The second trainer runs in this process: its refusal prints one line, no log.
    second = cli_in_process("train", run, "--gin.TRAIN_STEPS=1000000",
                            "--gin.CHECKPOINT_PERIOD=1000000")
    assert second.returncode == 2
    line = error_line(second.stderr)
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
  assert checkpoint_steps(run) == [stopped]
  assert os.path.exists(os.path.join(run, "prompts", f"step_{stopped}", PROMPT_NPY))
  assert not os.path.exists(os.path.join(run, lock_lib.LOCK_NAME))  # Released on exit.


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(stale_lock_run):
  run, gone_pid, result = stale_lock_run  # A 1-step training over a dead process's lock.
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Took over the lock" in result.stderr
  assert f"pid {gone_pid} is no longer running" in result.stderr
  assert not os.path.exists(os.path.join(run, lock_lib.LOCK_NAME))


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


def test_the_lock_leaves_no_empty_model_dir_but_keeps_the_users(tmp_path):
  fresh = tmp_path / "a" / "b" / "model_dir"
  lock_lib.RunLock(str(fresh)).acquire().release()
  assert not (tmp_path / "a").exists()  # Every folder it made, removed again.
  mine = tmp_path / "mine"
  mine.mkdir()
  lock_lib.RunLock(str(mine)).acquire().release()
  assert mine.is_dir()  # A folder the user made stays.
  written = tmp_path / "written"
  lock = lock_lib.RunLock(str(written)).acquire()
  (written / "train").mkdir()
  lock.release()
  assert (written / "train").is_dir()  # Something was written: kept.
