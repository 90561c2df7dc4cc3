"""Gin at the edges: registers the configurables and parses T5X-style flags.

Library modules never import gin; the binaries call `parse_gin_flags`.
Bundled configs (the repository's configs/ folder) are on gin's search path,
so `--gin_file=models/t5_1_1_base.gin` works from any working directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Sequence

import gin

from prompt_tuning.models import t5 as t5_lib

_REGISTERED = False


def configs_dir() -> str:
  """The bundled configs folder (next to the package, or installed inside it)."""
  here = os.path.dirname(os.path.abspath(__file__))
  for candidate in (os.path.join(os.path.dirname(here), "configs"),
                    os.path.join(here, "configs")):
    if os.path.isdir(candidate):
      return candidate
  raise FileNotFoundError(f"Bundled gin configs not found next to {here}")


def register_configurables() -> None:
  """Makes the library's config dataclasses bindable from gin (idempotent)."""
  global _REGISTERED
  if _REGISTERED:
    return
  gin.external_configurable(t5_lib.T5Config, "T5Config")
  _REGISTERED = True


def parse_gin(gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings, with clear errors for the usual mistakes."""
  register_configurables()
  for path in [os.getcwd(), *search_paths, configs_dir()]:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not os.path.isabs(f) and not any(
        os.path.exists(os.path.join(p, f)) for p in [os.getcwd(), *search_paths, configs_dir()]):
      raise FileNotFoundError(
          f"gin file {f!r} not found in the working directory, {list(search_paths)} "
          f"or the bundled configs ({configs_dir()})")
  try:
    with _quiet_root_logger():
      gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                          finalize_config=False)
  except (ValueError, KeyError, SyntaxError) as e:
    raise ValueError(f"Bad gin configuration: {e}") from e


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
  """Gin logs an ERROR for every search-path miss before it finds a file."""
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    root.setLevel(level)


def model_config_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = ()
                          ) -> t5_lib.T5Config:
  """Parses the files and returns the value of the MODEL_CONFIG macro."""
  parse_gin(gin_files, bindings)
  return gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
