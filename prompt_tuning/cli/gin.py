"""Gin at the edges: registers the configurables and parses T5X-style flags.

Library modules never import gin; the binaries call `parse_gin_flags`.
Bundled configs (the repository's configs/ folder) are on gin's search path,
so `--gin_file=models/t5_1_1_base.gin` works from any working directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, Sequence

import gin

from prompt_tuning.models import t5 as t5_lib

_REGISTERED = False


def configs_dir() -> str:
  """The bundled configs folder (next to the package, or installed inside it)."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # prompt_tuning/
  for candidate in (os.path.join(os.path.dirname(here), "configs"),
                    os.path.join(here, "configs")):
    if os.path.isdir(candidate):
      return candidate
  raise FileNotFoundError(f"Bundled gin configs not found next to {here}")


def register_configurables() -> None:
  """Makes the binaries' functions and config objects bindable (idempotent).

  Registered names: T5Config, SoftPrompt, MultiTaskPrompt, PromptBank,
  HyperPrompt, InputDependentPrompt, AttemptPrompt, ensemble_task, DecodingConfig, PartitioningConfig,
  train, evaluate, infer, precompile, prompt_init.{random_uniform,sampled_vocab,class_labels,from_string,
  from_file}, prompt_tuning_adafactor, every public optax function and
  schedule as optax.<name>, seqio.SentencePieceVocabulary and
  seqio.ByteVocabulary, TaskVocabularyConfig (the benchmark tasks' vocabulary)
  and file_task (a task from local files); constants PROMPT_TUNING_RULES and
  FULL_FINETUNING_RULES.
  """
  global _REGISTERED
  if _REGISTERED:
    return
  import optax
  import seqio

  from prompt_tuning import decoding, evaluation, precompile
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning.train import freezing, loop, optimizers
  from prompt_tuning.runtime import partitioning

  gin.external_configurable(t5_lib.T5Config, "T5Config")
  gin.external_configurable(soft.SoftPrompt, "SoftPrompt")
  from prompt_tuning.prompts import attempt, hyper, input_dependent, multi_task
  gin.external_configurable(multi_task.MultiTaskPrompt, "MultiTaskPrompt")
  gin.external_configurable(multi_task.PromptBank, "PromptBank")
  gin.external_configurable(hyper.HyperPrompt, "HyperPrompt")
  gin.external_configurable(input_dependent.InputDependentPrompt, "InputDependentPrompt")
  gin.external_configurable(attempt.AttemptPrompt, "AttemptPrompt")
  gin.external_configurable(decoding.DecodingConfig, "DecodingConfig")
  gin.external_configurable(loop.train, "train")
  gin.external_configurable(evaluation.evaluate, "evaluate")
  gin.external_configurable(evaluation.infer, "infer")
  gin.external_configurable(precompile.precompile, "precompile")
  gin.external_configurable(partitioning.PartitioningConfig, "PartitioningConfig")
  for name in ("random_uniform", "sampled_vocab", "class_labels", "from_string", "from_file"):
    gin.external_configurable(getattr(initializers, name), name, module="prompt_init")
  gin.external_configurable(optimizers.prompt_tuning_adafactor, "prompt_tuning_adafactor")
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
  from prompt_tuning.tasks import local_files, vocabularies
  gin.external_configurable(vocabularies.TaskVocabularyConfig, "TaskVocabularyConfig")
  gin.external_configurable(local_files.file_task, "file_task")
  gin.external_configurable(local_files.ensemble_task, "ensemble_task")
  gin.constant("PROMPT_TUNING_RULES", tuple(freezing.PROMPT_TUNING_RULES))
  gin.constant("FULL_FINETUNING_RULES", tuple(freezing.FULL_FINETUNING_RULES))
  _REGISTERED = True


def split_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
  """T5X-style flags: (gin files, bindings, search paths, other args).

  `--gin_file=F` (repeatable), `--gin.NAME=VALUE` (a binding `NAME = VALUE`,
  VALUE a gin literal such as "'text'" or 100), `--gin_search_paths=a,b`.
  """
  files, bindings, paths, rest = [], [], [], []
  args = list(argv)
  while args:
    arg = args.pop(0)
    if arg.startswith("--gin_file"):
      files.append(arg.split("=", 1)[1] if "=" in arg else args.pop(0))
    elif arg.startswith("--gin_search_paths"):
      value = arg.split("=", 1)[1] if "=" in arg else args.pop(0)
      paths.extend(p for p in value.split(",") if p)
    elif arg.startswith("--gin."):
      if "=" not in arg:
        raise ValueError(f"Bad gin flag {arg!r}: expected --gin.NAME=VALUE")
      name, value = arg[len("--gin."):].split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return files, bindings, paths, rest


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
