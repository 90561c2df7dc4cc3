"""Gin at the edges: registers the configurables and parses T5X-style flags.

Library modules never import gin (they declare what gin may bind in
`prompt_tuning.registry`); the binaries call `parse_gin`.
Bundled configs (the repository's configs/ folder) are on gin's search path,
so `--gin_file=models/t5_1_1_base.gin` works from any working directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator, Sequence

import gin


_REGISTERED = False

# Bindings that moved into the grouped specs (CHANGELOG.md says how to move):
# the old name fails with one line naming the new one.
_INFERENCE_MOVES = dict(checkpoint_step="checkpoint_step", restore_checkpoint="restore",
                        decoding_config="decoding", class_labels="class_labels",
                        max_examples="max_examples", ensemble_prompts="ensemble_prompts",
                        ensemble_method="ensemble_method")
MOVED_BINDINGS = {
    "train.checkpoint_period": "CheckpointSpec.period",
    "train.keep_checkpoints": "CheckpointSpec.keep",
    "train.restore_fallback": "CheckpointSpec.restore_fallback",
    "train.z_loss": "LossSpec.z_loss",
    "train.wayward": "LossSpec.wayward",
    "train.use_dropout": "DropoutSpec.enabled",
    "train.dropout_rng_impl": "DropoutSpec.rng_impl",
    "train.log_period": "ReportSpec.log_period",
    "train.progress": "ReportSpec.progress",
    "train.frozen_digest": "ReportSpec.frozen_digest",
    "train.on_non_finite": "ChecksSpec.on_non_finite",
    "train.max_encoder_length": "ChecksSpec.max_encoder_length",
    **{f"{binary}.{old}": f"InferenceSpec.{new}" for binary in ("evaluate", "infer")
       for old, new in _INFERENCE_MOVES.items()},
}
_NO_SUCH_PARAMETER = re.compile(r"Configurable '(\w+)' doesn't have a parameter named '(\w+)'")


def configs_dir() -> str:
  """The bundled configs folder (next to the package, or installed inside it)."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # prompt_tuning/
  for candidate in (os.path.join(os.path.dirname(here), "configs"),
                    os.path.join(here, "configs")):
    if os.path.isdir(candidate):
      return candidate
  raise FileNotFoundError(f"Bundled gin configs not found next to {here}")


# The library's modules whose definitions declare gin configurables
# (prompt_tuning.registry); everything under these packages is imported.
_LIBRARY_PACKAGES = ("prompt_tuning.models", "prompt_tuning.prompts", "prompt_tuning.runtime",
                     "prompt_tuning.train", "prompt_tuning.retrieval")
_LIBRARY_MODULES = ("prompt_tuning.decoding", "prompt_tuning.evaluation",
                    "prompt_tuning.precompile", "prompt_tuning.tasks.local_files",
                    "prompt_tuning.tasks.vocabularies")


def register_configurables() -> None:
  """Makes the binaries' functions and config objects bindable (idempotent).

  The library declares its own configurables where they are defined
  (`prompt_tuning.registry`): T5Config, ModelSpec, DataSpec,
  PartitioningConfig, DecodingConfig, the prompt modules, the prompt_init.*
  initializers, train / evaluate / infer / precompile, ... Here they are
  handed to gin, with every public optax function and schedule as
  optax.<name> and seqio's SentencePieceVocabulary and ByteVocabulary.
  """
  global _REGISTERED
  if _REGISTERED:
    return
  import importlib
  import pkgutil

  import optax
  import seqio

  from prompt_tuning import registry
  for package in _LIBRARY_PACKAGES:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, package + "."):
      if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
  for module in _LIBRARY_MODULES:
    importlib.import_module(module)
  for obj, name, module in registry.CONFIGURABLES:
    gin.external_configurable(obj, name, module=module)
  for name, value in registry.CONSTANTS.items():
    gin.constant(name, value)
  for name in dir(optax) + [f"schedules.{n}" for n in dir(optax.schedules)]:
    obj = getattr(optax.schedules, name.split(".")[1]) if "." in name else getattr(optax, name)
    if not name.split(".")[-1].startswith("_") and callable(obj) and name[0].islower():
      try:
        gin.external_configurable(obj, name.split(".")[-1], module="optax")
      except ValueError:  # Already registered under that name (an alias).
        pass
  gin.external_configurable(seqio.SentencePieceVocabulary, "SentencePieceVocabulary",
                            module="seqio")
  gin.external_configurable(seqio.ByteVocabulary, "ByteVocabulary", module="seqio")
  _REGISTERED = True


def run_configured(name: str) -> Any:
  """Calls the registered function `name` with every argument gin binds."""
  try:
    fn = gin.get_configurable(name)
  except ValueError as e:
    raise ValueError(f"No configurable {name!r}: {e}") from e
  try:
    return fn()
  except TypeError as e:
    if "macro() missing" in str(e):
      raise ValueError(
          f"{name}: a %MACRO used by the configs has no value. ENCODER_PROMPT comes from a "
          "prompts/ file (e.g. --gin_file=prompts/soft_prompt.gin), MODEL_CONFIG from a "
          "models/ file; others are listed at the top of each configs/runs file") from e
    if "missing" in str(e) and "argument" in str(e):
      raise ValueError(f"{name}: {e}. Bind it in a gin file or with --gin.{name}.<arg>=...; "
                       "required macros are listed at the top of each configs/runs file") from e
    raise


def apply_task_vocabulary() -> None:
  """Applies TaskVocabularyConfig's bindings, if there are any, to the registered tasks."""
  from prompt_tuning.tasks import vocabularies
  bound = False
  for arg in ("kind", "path"):
    try:
      gin.query_parameter(f"TaskVocabularyConfig.{arg}")
      bound = True
    except ValueError:
      pass
  if bound:
    config = gin.get_configurable("TaskVocabularyConfig")()
    config.build()  # A bad kind or a missing file fails here, before any work.
    vocabularies.configure(config)


def bind_file_task() -> bool:
  """tasks/local_file.gin works before or after the runs/ file.

  A runs/ file included after it sets MIXTURE_OR_TASK_NAME back to
  %gin.REQUIRED; when file_task is bound and the task is still required,
  the file task is what the user meant. Returns whether it bound it.
  """
  try:
    gin.query_parameter("file_task.name")
    task = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  except ValueError:
    return False
  if "gin.REQUIRED" not in repr(task):
    return False
  with gin.unlock_config():
    gin.parse_config("MIXTURE_OR_TASK_NAME = @file_task()")
  return True


def bind_checkpoint_config() -> str:
  """Without a models/ file, MODEL_CONFIG is the checkpoint's own config.

  When MODEL_CONFIG is unbound and INITIAL_CHECKPOINT_PATH names a
  checkpoint, binds `MODEL_CONFIG = @T5Config()` with every architecture
  field the checkpoint records (readers.config_for), so that train, eval,
  infer and precompile need no size flags. A `T5Config.<field>` the user
  bound is kept; one that contradicts a recorded value is an error naming
  both. Returns the checkpoint path used ("" when a models/ file binds
  MODEL_CONFIG, or there is no checkpoint).
  """
  try:
    gin.query_parameter("%MODEL_CONFIG")
    return ""
  except ValueError:
    pass
  try:
    path = gin.query_parameter("%INITIAL_CHECKPOINT_PATH")
  except ValueError:
    return ""
  if not isinstance(path, str) or not path:
    return ""
  from prompt_tuning import readers
  from prompt_tuning.readers import config as config_lib
  config = readers.config_for(path)
  recorded, source = readers.recorded_config(path)
  wrong = []
  with gin.unlock_config():
    for name in config_lib.ARCHITECTURE_FIELDS:
      try:
        bound = gin.query_parameter(f"T5Config.{name}")
      except ValueError:
        gin.bind_parameter(f"T5Config.{name}", getattr(config, name))
        continue
      bound = tuple(bound) if isinstance(bound, list) else bound
      if name in recorded and bound != recorded[name]:
        wrong.append(f"T5Config.{name}={bound!r} is bound but {source} records "
                     f"{name}={recorded[name]!r}")
    if wrong:
      raise ValueError("; ".join(wrong) + ". Drop the binding: the recorded value is used")
    gin.parse_config("MODEL_CONFIG = @T5Config()")
  return path


def bind_checkpoint_vocabulary() -> str:
  """The task vocabulary is the checkpoint's own, where one is recorded with it.

  When INITIAL_CHECKPOINT_PATH records a vocabulary (readers/vocabulary.py:
  this project's backbones, a Hugging Face folder's spiece.model, a run's
  config.gin) and TaskVocabularyConfig is unbound, binds it. A
  TaskVocabularyConfig binding (or PT_TASK_VOCABULARY) that names another
  vocabulary is an error naming both. Returns the file that records it (""
  when nothing is recorded).
  """
  try:
    path = gin.query_parameter("%INITIAL_CHECKPOINT_PATH")
  except ValueError:
    return ""
  if not isinstance(path, str) or not path or not os.path.exists(path):
    return ""  # No checkpoint, or a missing one: its reader reports that.
  from prompt_tuning.readers import vocabulary as vocabulary_lib
  from prompt_tuning.tasks import vocabularies
  try:
    found = vocabulary_lib.recorded(path)
  except (OSError, ValueError):  # A damaged record: the config reader names it.
    return ""
  if found is None:
    return ""
  bound = {}
  for arg in ("kind", "path"):
    try:
      bound[arg] = gin.query_parameter(f"TaskVocabularyConfig.{arg}")
    except ValueError:
      pass
  if bound:
    given = vocabularies.TaskVocabularyConfig(**bound)
    what = "TaskVocabularyConfig binds"
  elif os.environ.get("PT_TASK_VOCABULARY"):
    given = vocabularies.current_config()
    what = "PT_TASK_VOCABULARY names"
  else:
    with gin.unlock_config():
      gin.bind_parameter("TaskVocabularyConfig.kind", found.kind)
      if found.path:
        gin.bind_parameter("TaskVocabularyConfig.path", found.path)
    return found.source

  def resolved(kind, spm):
    return vocabulary_lib.Vocabulary(kind, spm or vocabularies.default_path(kind))

  mine, theirs = resolved(given.kind, given.path), resolved(found.kind, found.path)
  if not vocabulary_lib.same(mine, theirs):
    raise ValueError(f"{what} the vocabulary {mine.describe()} but {found.source} records "
                     f"{theirs.describe()}: drop the binding (the recorded vocabulary is used) "
                     "or use another checkpoint")
  return found.source


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
  except OSError as e:  # An included file that cannot be found or read.
    raise FileNotFoundError(f"gin: {e}") from e
  except (ValueError, KeyError, SyntaxError, ImportError) as e:
    raise ValueError(f"Bad gin configuration: {_moved_binding(str(e)) or e}") from e


def _moved_binding(message: str) -> str:
  """One line naming the new binding, if gin refused one that moved into a spec."""
  found = _NO_SUCH_PARAMETER.match(message)
  old = found and f"{found.group(1)}.{found.group(2)}"
  if old not in MOVED_BINDINGS:
    return ""
  where = message.splitlines()[1].strip() if "\n" in message else ""
  where = where[:1].lower() + where[1:]
  return (f"{old} is now {MOVED_BINDINGS[old]}: bind that instead (CHANGELOG.md, "
          f"'Unreleased'){'; ' + where if where else ''}")


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
                          ) -> Any:
  """Parses the files and returns the value of the MODEL_CONFIG macro."""
  parse_gin(gin_files, bindings)
  return gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
