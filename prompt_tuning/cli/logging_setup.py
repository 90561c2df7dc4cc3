"""Quiet terminals by default: our own INFO lines, dependencies at WARNING.

Orbax logs an INFO line for every step of a save or a restore (through absl),
TensorFlow and XLA print C++ INFO lines at start-up: a user of `prompt-tuning
infer` saw pages of them around one result line. By default the binaries
show the project's own INFO lines (progress, "Resumed from step N", saved
checkpoints), every WARNING and ERROR, the progress bar and the result;
`--verbose` shows everything at INFO.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

VERBOSE_FLAG = "--verbose"
# Python loggers of dependencies that are chatty at INFO.
NOISY_LOGGERS = ("absl", "orbax", "orbax.checkpoint", "tensorflow", "jax", "jax._src",
                 "tensorstore", "etils", "seqio", "gin", "h5py", "matplotlib")


def pop_verbose(argv: Sequence[str]) -> tuple[bool, list[str]]:
  """Takes --verbose (or --verbose=true/false) out of the arguments."""
  verbose, rest = False, []
  for arg in argv:
    name, _, value = arg.partition("=")
    if name == VERBOSE_FLAG:
      verbose = value.lower() not in ("false", "0", "no")
    else:
      rest.append(arg)
  return verbose, rest


def configure(verbose: bool = False) -> None:
  """Sets up logging for a binary run; call before JAX or TensorFlow start."""
  if not verbose:
    # C++ logs of TensorFlow and XLA; must be set before they load.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger().setLevel(logging.INFO)
  level = logging.INFO if verbose else logging.WARNING
  for name in NOISY_LOGGERS:
    logging.getLogger(name).setLevel(level)
  if not verbose and not any(isinstance(f, _SeqioCacheAdvice) for f in
                             logging.getLogger("absl").filters):
    logging.getLogger("absl").addFilter(_SeqioCacheAdvice())
  try:  # absl keeps its own verbosity besides the Python logger's level.
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
  except ImportError:
    pass


class _SeqioCacheAdvice(logging.Filter):
  """Drops seqio's "uncached FunctionDataset" advice (a WARNING on every train run).

  It is advice for large TFDS-scale sources; this project's file and
  synthetic tasks are small in-memory sources, re-read in a fixed order that
  the data position restores exactly. Every other warning passes.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return "uncached FunctionDataset" not in record.getMessage()
