"""The one error a reader raises for a checkpoint whose files are damaged.

A backbone with a data file deleted used to end a run with Orbax's or
TensorStore's own message (or a TypeError from a metadata lookup that found
nothing) and asyncio tracebacks from their threads. Every reader raises
DamagedBackboneError instead: one line naming the checkpoint, the file (and
the array it holds, where known), what is wrong with it, and what was
expected. It is a ValueError, so the binaries print it as their one error
line and exit 2.
"""

from __future__ import annotations

from typing import Optional


class DamagedBackboneError(ValueError):
  """A checkpoint file is missing, truncated or unreadable."""

  def __init__(self, checkpoint: str, problem: str, expected: str,
               array: Optional[str] = None):
    self.checkpoint, self.problem, self.expected, self.array = (checkpoint, problem, expected,
                                                                array)
    what = f"array {array}: " if array else ""
    super().__init__(f"Damaged checkpoint {checkpoint}: {what}{problem}; expected {expected}. "
                     "Restore its files from where the checkpoint came from")


def first_line(error: BaseException, limit: int = 400) -> str:
  """The first line of a library's error message, cut to `limit` characters.

  TensorStore's messages append the whole JSON spec after the reason.
  """
  text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  text = text.split(" [tensorstore_spec=")[0].split(" [source locations=")[0]
  return text if len(text) <= limit else text[:limit - 3] + "..."
