"""Late errors from the background threads of Orbax and TensorStore, kept off the terminal.

When an Orbax read or write fails, Orbax closes the asyncio event loop it ran
the operation on while TensorStore's C++ threads still hold callbacks for it.
Each callback that fires afterwards raises "RuntimeError: Event loop is
closed" inside asyncio's `call_soon_threadsafe`, and Python prints it through
`sys.excepthook` or `sys.unraisablehook` as a traceback: after the binary's one-line error, or at
exit. Futures that failed with nobody awaiting them are logged by asyncio
("exception was never retrieved") with another traceback when they are
garbage-collected. Neither says anything the error line has not said.

`drop_closed_loop_callbacks()` (installed by the binaries at start, and by
the checkpoint store before Orbax runs) drops exactly those callbacks;
`quiet_after_error()` (called by the binaries once their error line is
printed) drops asyncio's never-retrieved records. Anything else still
prints.
"""

from __future__ import annotations

import logging
import sys

_NEVER_RETRIEVED = ("exception was never retrieved",)


def _is_closed_loop_callback(kind, value, tb) -> bool:
  """A RuntimeError raised by asyncio's call_soon_threadsafe on a closed loop, called
  straight from a C++ thread (its outermost Python frame is call_soon_threadsafe)."""
  return (kind is RuntimeError and "Event loop is closed" in str(value) and tb is not None
          and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


def drop_closed_loop_callbacks() -> None:
  """Installs (once) hooks that drop TensorStore's closed-loop callbacks.

  TensorStore reports a failed callback either with PyErr_Print (through
  sys.excepthook) or with PyErr_WriteUnraisable (through sys.unraisablehook,
  which prints a bare traceback when no object is named), so both are hooked.
  """
  previous = sys.excepthook
  if not getattr(previous, "drops_closed_loop", False):
    def hook(kind, value, tb):
      if _is_closed_loop_callback(kind, value, tb):
        return
      previous(kind, value, tb)
    hook.drops_closed_loop = True
    sys.excepthook = hook

  previous_unraisable = sys.unraisablehook
  if not getattr(previous_unraisable, "drops_closed_loop", False):
    def unraisable_hook(unraisable):
      if _is_closed_loop_callback(unraisable.exc_type, unraisable.exc_value,
                                  unraisable.exc_traceback):
        return
      previous_unraisable(unraisable)
    unraisable_hook.drops_closed_loop = True
    sys.unraisablehook = unraisable_hook


class _DropNeverRetrieved(logging.Filter):
  """Drops asyncio's records of failed futures nobody awaited (the failure is explained)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.name == "asyncio" and record.levelno >= logging.ERROR
                and any(text in record.getMessage() for text in _NEVER_RETRIEVED))


def quiet_after_error() -> None:
  """Called once a binary has printed its one-line error: the background threads'
  late reports of the same failure are dropped until the process exits."""
  drop_closed_loop_callbacks()
  asyncio_log = logging.getLogger("asyncio")
  if not any(isinstance(f, _DropNeverRetrieved) for f in asyncio_log.filters):
    asyncio_log.addFilter(_DropNeverRetrieved())
