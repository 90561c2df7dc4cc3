"""One writer per MODEL_DIR: a lock file taken before the first write.

Two trainers started on one folder (the same command typed twice) used to
both run to the end, writing checkpoints and prompts over each other. The
lock is `MODEL_DIR/RUN_LOCK`, created with O_EXCL, holding JSON naming its
holder: host, pid, the process's kernel start time (so a recycled pid is not
mistaken for the holder) and the wall-clock start. A second process refuses
to start with one line naming the holder.

A lock left behind is taken over with a warning when its holder is gone: on
this host, when the pid no longer runs (or runs a different process); on
another host, when the holder has not refreshed the file's mtime for
`stale_after_s` seconds (the holder touches it from a daemon thread every
`stale_after_s / 10`). A multi-host run shares one lock: process 0 takes it
and tells the others whether it got it, so that every process starts, or
every process stops.

The lock creates MODEL_DIR when it is absent, and removes the folders it
created on release while they are still empty: a run stopped by its setup
(a damaged backbone, an unknown task) leaves no empty MODEL_DIR behind.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Optional

log = logging.getLogger(__name__)

LOCK_NAME = "RUN_LOCK"
STALE_AFTER_S = float(os.environ.get("PROMPT_TUNING_LOCK_STALE_S", 600))


class RunLockedError(FileExistsError):
  """MODEL_DIR is held by another live run."""


def _pid_start_ticks(pid: int) -> Optional[str]:
  """The kernel's start time of `pid` (Linux), or None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime
  except (OSError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's live process.
    return True
  return True


class RunLock:
  """The lock of one MODEL_DIR, held by this process until `release()`."""

  def __init__(self, model_dir: str, stale_after_s: float = STALE_AFTER_S):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_NAME)
    self.stale_after_s = stale_after_s
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self.held = False

  def describe(self, holder: dict[str, Any]) -> str:
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"started {holder.get('started', '?')}")

  def _read(self) -> Optional[dict[str, Any]]:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # Half-written by a process killed while creating it.

  def _stale_reason(self, holder: dict[str, Any]) -> Optional[str]:
    """Why the holder is gone, or None if it may still be running."""
    try:
      age = time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return "it was just released"
    if not holder:
      return "the lock file is empty or unreadable" if age > 5 else None
    if holder.get("host") == socket.gethostname():
      pid = int(holder.get("pid", -1))
      if pid == os.getpid():
        return "it is this process's own (an earlier run in this process ended without it)"
      if not _pid_alive(pid):
        return f"pid {pid} is no longer running"
      ticks = holder.get("pid_start_ticks")
      if ticks and _pid_start_ticks(pid) not in (None, ticks):
        return f"pid {pid} now belongs to another process"
      return None
    if age > self.stale_after_s:
      return (f"it was last refreshed {age:.0f} s ago (another host's lock counts as stale "
              f"after {self.stale_after_s:.0f} s)")
    return None

  def acquire(self) -> "RunLock":
    """Takes the lock (creating MODEL_DIR if needed) or raises RunLockedError naming its holder."""
    self._created = _missing_folders(self.model_dir)
    os.makedirs(self.model_dir, exist_ok=True)
    record = dict(host=socket.gethostname(), pid=os.getpid(),
                  pid_start_ticks=_pid_start_ticks(os.getpid()),
                  started=datetime.datetime.now(datetime.timezone.utc).strftime(
                      "%Y-%m-%d %H:%M:%S UTC"), token=self.token)
    for _ in range(20):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None:
          continue  # Released meanwhile: try again.
        reason = self._stale_reason(holder)
        if reason is None:
          raise RunLockedError(
              f"MODEL_DIR {self.model_dir} is in use by another run ({self.describe(holder)}; "
              f"lock file {self.path}); wait for it to end, stop it, or use another MODEL_DIR")
        # Renaming is atomic: of two processes taking over, one wins.
        aside = f"{self.path}.stale-{self.token}"
        try:
          os.rename(self.path, aside)
        except FileNotFoundError:
          continue
        os.remove(aside)
        if holder and int(holder.get("pid", -1)) != os.getpid():
          log.warning("Took over the lock of MODEL_DIR %s left by %s: %s", self.model_dir,
                      self.describe(holder), reason)
        continue
      try:
        with os.fdopen(fd, "w") as f:
          json.dump(record, f)
          f.flush()
          os.fsync(f.fileno())
      except OSError:
        os.remove(self.path)  # A full disk: leave no empty lock behind.
        raise
      self.held = True
      self._start_heartbeat()
      atexit.register(self.release)
      return self
    raise RunLockedError(f"Could not take the lock {self.path}: it keeps changing hands")

  def _start_heartbeat(self) -> None:
    def beat():
      while not self._stop.wait(max(self.stale_after_s / 10, 0.1)):
        try:
          os.utime(self.path)
        except OSError:
          pass
    self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
    self._thread.start()

  def release(self) -> None:
    """Removes the lock file if it is still this lock's (idempotent)."""
    if not self.held:
      return
    self.held = False
    self._stop.set()
    holder = self._read()
    if holder and holder.get("token") == self.token:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    # A run that stopped before writing anything leaves no folder behind:
    # the folders the lock created go again while they are empty.
    for folder in getattr(self, "_created", []):
      try:
        os.rmdir(folder)
      except OSError:
        break


def _missing_folders(path: str) -> list[str]:
  """The folders `os.makedirs(path)` would create, deepest first."""
  missing = []
  path = os.path.abspath(path)
  while not os.path.exists(path):
    missing.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


class _NoLock:
  """What processes other than 0 of a multi-host run hold."""
  held = False

  def release(self) -> None:
    pass


def acquire_for_run(model_dir: str, stale_after_s: float = STALE_AFTER_S):
  """The run's lock of MODEL_DIR; process 0 takes it for all processes of a run.

  Raises:
    RunLockedError: another live run holds it (raised on every process).
  """
  import jax
  if jax.process_count() == 1:
    return RunLock(model_dir, stale_after_s).acquire()
  import numpy as np
  from jax.experimental import multihost_utils
  lock, error = _NoLock(), ""
  if jax.process_index() == 0:
    try:
      lock = RunLock(model_dir, stale_after_s).acquire()
    except RunLockedError as e:
      error = str(e)
  failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
  if int(failed):
    raise RunLockedError(error or f"MODEL_DIR {model_dir} is in use by another run "
                         "(process 0 of this run could not take its lock)")
  return lock
