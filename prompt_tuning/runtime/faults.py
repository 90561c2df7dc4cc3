"""Fault injection for crash tests: kill this process at a named point.

Set PROMPT_TUNING_FAULT to `<point>:<step>` (e.g. `during_save:4`) and the
process sends itself SIGKILL there; unset (always, outside tests) it does
nothing. Points: `after_step` (a step dispatched, nothing saved),
`during_save` (Orbax has started writing, not committed), `before_export`
(the checkpoint is committed, the .npy prompt not yet written).
"""

from __future__ import annotations

import os
import signal

ENV = "PROMPT_TUNING_FAULT"
POINTS = ("after_step", "during_save", "before_export")


def maybe_kill(point: str, step: int) -> None:
  spec = os.environ.get(ENV)
  if not spec:
    return
  want_point, _, want_step = spec.partition(":")
  if want_point not in POINTS:
    raise ValueError(f"{ENV}={spec!r}: unknown point; expected one of {POINTS}")
  if want_point == point and int(want_step) == step:
    os.kill(os.getpid(), signal.SIGKILL)
