"""Preemption: on SIGTERM, finish the step, save, export the prompt, exit 0.

Cloud schedulers send SIGTERM some seconds before they take a machine away.
T5X answers it by saving at the next step and exiting cleanly; so does this.
The handler only sets a flag: the step under way and any save under way
complete, then the loop saves the step it reached and returns.

On one process the flag is this process's own. A multi-host run must stop
at the same step everywhere, or the save's collectives would hang; there
JAX's preemption sync point (which the coordination service feeds from the
SIGTERM every host receives) decides, as in T5X.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax


class PreemptionWatcher:
  """Watches for SIGTERM between `install()` and `uninstall()`."""

  def __init__(self):
    self.signalled = False
    self.stopped_at: Any = None
    self._previous: Any = None
    self._installed = False

  def install(self) -> "PreemptionWatcher":
    # Python handlers can only be set from the main thread; elsewhere (a
    # trainer run from a worker thread) SIGTERM keeps its default action.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.signalled = True

  def should_stop(self, step: int) -> bool:
    """Whether to save `step` and stop (the same answer on every process)."""
    if jax.process_count() == 1:
      stop = self.signalled
    else:
      from jax.experimental import multihost_utils
      try:
        stop = bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # jax_enable_preemption_service turned off: no notice.
        stop = False
    if stop:
      self.stopped_at = step
    return stop

  def uninstall(self) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False

  def message(self) -> str:
    return (f"Preempted (SIGTERM): finished step {self.stopped_at}, saved its checkpoint and "
            "exported the prompt; exiting 0. Run the same command to continue from there")
