"""Fault injection for crash tests: kill this process at a named point.

Set PROMPT_TUNING_FAULT to `<point>:<step>` (e.g. `during_save:4`) and the
process sends itself SIGKILL there; unset (always, outside tests) it does
nothing. Points: `after_step` (a step dispatched, nothing saved),
`during_save` (Orbax has started writing, not committed), `before_export`
(the checkpoint is committed, the .npy prompt not yet written), `during_eval`
(train_eval written, infer_eval not), `during_best_export` (the new best
folder written, MODEL_DIR/best not yet pointing at it).
"""

from __future__ import annotations

import os
import signal

ENV = "PROMPT_TUNING_FAULT"
POINTS = ("after_step", "during_save", "before_export", "during_eval", "during_best_export")


def maybe_kill(point: str, step: int) -> None:
  spec = os.environ.get(ENV)
  if not spec:
    return
  want_point, _, want_step = spec.partition(":")
  if want_point not in POINTS:
    raise ValueError(f"{ENV}={spec!r}: unknown point; expected one of {POINTS}")
  if want_point == point and int(want_step) == step:
    os.kill(os.getpid(), signal.SIGKILL)


# Faults that are not kills: a full disk and a preemption notice, injected at
# a step so that the real code paths (Orbax's failing write, the SIGTERM
# handler) run deterministically in tests.
DISK_FULL_ENV = "PROMPT_TUNING_DISK_FULL_AT_SAVE"
SIGTERM_ENV = "PROMPT_TUNING_SIGTERM_AFTER_STEP"


def maybe_fill_disk(step: int) -> None:
  """Before the save of step $PROMPT_TUNING_DISK_FULL_AT_SAVE, forbid growing any file.

  RLIMIT_FSIZE makes every later write fail with EFBIG, as a full disk fails
  writes with ENOSPC (SIGXFSZ is ignored so that the write fails instead of
  killing the process).
  """
  if os.environ.get(DISK_FULL_ENV) == str(step):
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def maybe_sigterm(step: int) -> None:
  """After step $PROMPT_TUNING_SIGTERM_AFTER_STEP, send this process SIGTERM."""
  if os.environ.get(SIGTERM_ENV) == str(step):
    os.kill(os.getpid(), signal.SIGTERM)
