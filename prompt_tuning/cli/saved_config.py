"""MODEL_DIR/config.gin: the run's configuration, saved with the run (as T5X saves it).

`train` writes the operative configuration (gin's `operative_config_str()`:
every value the run read, macros included) after the run, headed by the
command line that made it. `eval` and `infer` given only MODEL_DIR read it
back: the saved bindings first, then the binary's run file (its own
bindings, such as `DataSpec.split = %EVAL_SPLIT`), then the saved macros
again (so the run file's `%gin.REQUIRED` defaults do not clobber them), then
the command line, which overrides all of it.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

FILE = "config.gin"
_STATEMENT_START = re.compile(r"^[A-Za-z_@%]")
_MACRO = re.compile(r"^([A-Z_][A-Z0-9_]*)\s*=")
_KEY = re.compile(r"^\s*([\w.%/@]+)\s*=")


def path(model_dir: str) -> str:
  return os.path.join(model_dir, FILE)


def write(model_dir: str, command_line: Sequence[str]) -> str:
  """Writes MODEL_DIR/config.gin atomically; returns its path."""
  import gin
  lines = ["# The operative configuration of this run, as T5X writes MODEL_DIR/config.gin.",
           "# `prompt-tuning eval|infer MODEL_DIR` reads it back. Written by:",
           "#   prompt-tuning " + " ".join(command_line), ""]
  out = path(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  with open(out + ".tmp", "w") as f:
    f.write("\n".join(lines) + "\n" + gin.operative_config_str())
  os.replace(out + ".tmp", out)
  return out


def statements(text: str) -> list[str]:
  """The file's binding statements, each with its continuation lines."""
  chunks: list[list[str]] = []
  for line in text.splitlines():
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    if _STATEMENT_START.match(line) or not chunks:
      chunks.append([line])
    else:
      chunks[-1].append(line)
  return ["\n".join(c) for c in chunks]


def macro_statements(text: str) -> list[str]:
  return [s for s in statements(text) if _MACRO.match(s)]


def keys(text_or_bindings: Sequence[str]) -> set[str]:
  """The bound names ('MODEL_DIR', 'DataSpec.batch_size') of binding statements."""
  return {m[1] for s in text_or_bindings if (m := _KEY.match(s))}


def overridden(saved_text: str, bindings: Sequence[str]) -> list[str]:
  """The command-line bindings that replace a value saved in config.gin."""
  saved = keys(statements(saved_text))
  return sorted(k for k in keys(bindings) if k in saved)


def macros(model_dir: str) -> dict:
  """The literal macro values saved in MODEL_DIR/config.gin ({} without the file)."""
  import ast
  if not os.path.isfile(path(model_dir)):
    return {}
  with open(path(model_dir)) as f:
    text = f.read()
  out = {}
  for statement in macro_statements(text):
    name, _, value = statement.partition("=")
    value = value.replace("\\\n", " ")  # gin wraps a long value after `NAME = \`.
    try:
      out[name.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):  # A reference (@T5Config()): not a plain value.
      pass
  return out


def latest_prompt(model_dir: str) -> str:
  """The newest exported encoder prompt of a run (layout.prompt_file at the last step)."""
  from prompt_tuning import layout
  folder = os.path.join(model_dir, "prompts")
  steps = sorted(int(e[len("step_"):]) for e in (os.listdir(folder) if os.path.isdir(folder)
                                                 else []) if re.fullmatch(r"step_\d+", e))
  for step in reversed(steps):
    candidate = layout.prompt_file(model_dir, step)
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f"{model_dir} has no exported prompt under {folder}; train first")


def resolve_run(model_dir: str) -> tuple[str, str, str]:
  """(backbone, task, newest prompt file) of a trained MODEL_DIR, from its config.gin."""
  saved = macros(model_dir)
  backbone = saved.get("INITIAL_CHECKPOINT_PATH")
  if not isinstance(backbone, str):
    raise ValueError(f"{path(model_dir)} names no INITIAL_CHECKPOINT_PATH")
  task = saved.get("MIXTURE_OR_TASK_NAME")
  if not isinstance(task, str):  # A file task (@file_task()): its name binding.
    task = _literal_binding(model_dir, "file_task.name") or "prompt"
  return backbone, task, latest_prompt(model_dir)


def _literal_binding(model_dir: str, name: str):
  """The literal value of `name` in MODEL_DIR/config.gin, gin scopes aside (None if none)."""
  import ast
  with open(path(model_dir)) as f:
    text = f.read()
  for statement in statements(text):
    key, _, value = statement.partition("=")
    if key.strip().rsplit("/", 1)[-1] == name:
      try:
        return ast.literal_eval(value.replace("\\\n", " ").strip())
      except (ValueError, SyntaxError):
        return None
  return None
