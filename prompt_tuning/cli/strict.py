"""Strict gin bindings: everything the user binds must be read by the binary.

A misspelled macro (`--gin.TRAIN_STEPZ=3`) is valid gin: it defines a macro
nothing refers to, and the run goes on with the default step count. Here,
right after parsing and before any work, every binding that comes from the
command line or from a user's gin file (anything outside the bundled
configs/) is checked against what the binary's function will actually read:
the bindings reachable from it through `@Configurable()` and `%MACRO`
references. An unreachable one is an error naming the closest known names;
`--gin.allow_unused=True` turns the error into a warning.

Bundled config files are not checked: including `prompts/random_uniform.gin`
after `prompts/soft_prompt.gin` legitimately leaves the sampled-vocabulary
bindings unread.
"""

from __future__ import annotations

import difflib
import io
import logging
import os
from typing import Any, Iterator, Optional, Sequence

from gin import config as gin_config
from gin import config_parser

log = logging.getLogger(__name__)

ALLOW_UNUSED = "allow_unused"
_MACRO = "gin.macro"
_BINARIES = ("train", "evaluate", "infer", "precompile")
# The binaries' grouped specs: what a shared gin file binds on them is read by
# some binary even in a run whose files do not bind e.g. `train.checkpoint`.
_SPECS = ("CheckpointSpec", "LossSpec", "DropoutSpec", "ReportSpec", "ChecksSpec",
          "InferenceSpec")
# Configurables the binaries call directly, not through the root's bindings.
_ALWAYS_READ = ("TaskVocabularyConfig",)


class UnusedBindingError(ValueError):
  """A binding that nothing in the run reads."""


def pop_allow_unused(bindings: Sequence[str]) -> tuple[bool, list[str]]:
  """Takes `allow_unused = ...` (from --gin.allow_unused=...) out of the bindings."""
  allow, rest = False, []
  for binding in bindings:
    name, _, value = binding.partition("=")
    if name.strip() == ALLOW_UNUSED:
      value = value.strip()
      if value not in ("True", "False"):
        raise ValueError(f"--gin.allow_unused={value}; expected True or False")
      allow = value == "True"
    else:
      rest.append(binding)
  return allow, rest


def check_bindings(root: str, gin_files: Sequence[str], bindings: Sequence[str],
                   search_paths: Sequence[str] = (), allow_unused: bool = False,
                   bundled_dir: Optional[str] = None) -> list[str]:
  """Raises UnusedBindingError (or warns) for user bindings that `root` never reads.

  Call after gin has parsed `gin_files` and `bindings` and before running.

  Args:
    root: the registered name of the binary's function ("train", "infer", ...).
    gin_files: the --gin_file values; those under `bundled_dir` are not checked,
      nor are the bundled files they include.
    bindings: the --gin.NAME=VALUE bindings as "NAME = VALUE".
    search_paths: where relative gin file names are looked up.
    allow_unused: warn instead of raising.
    bundled_dir: the bundled configs folder.

  Returns:
    the problems found (one message each), also when only warned about.
  """
  paths = [os.getcwd(), *search_paths] + ([bundled_dir] if bundled_dir else [])
  statements = [(f"--gin.{b.strip().replace(' = ', '=', 1)}", st)
                for b in bindings for st in _parse(b, None)]
  seen: set[str] = set()
  for f in gin_files:
    statements += _user_file_statements(f, paths, bundled_dir, seen)
  used, known_macros, known_configurables = _reachable(root)
  # A gin file is often shared by train, eval and infer (T5X's habit): what
  # another binary reads, or a macro some binding refers to, is not a typo
  # there. Command-line flags stay strict: the binary itself must read them.
  used_by_any = set(used) | {(name, _MACRO) for name in _referenced_macros()}
  for other in _BINARIES + _SPECS:
    if other != root:
      used_by_any |= _reachable(other)[0]
  problems = []
  for origin, st in statements:
    key = _binding_key(st)
    if key is None or key in used or (not origin.startswith("--gin.") and key in used_by_any):
      continue
    scope, selector = key
    if selector == _MACRO:
      name = scope
      near = difflib.get_close_matches(name, sorted(known_macros - {name}), n=3, cutoff=0.6)
    else:
      short = st.selector.split(".")[-1]
      name = f"{st.scope + '/' if st.scope else ''}{st.selector}.{st.arg_name}"
      near = difflib.get_close_matches(short, sorted(known_configurables - {short}), n=3,
                                       cutoff=0.6)
      near = [f"{n}.{st.arg_name}" for n in near]
    hint = f"; did you mean {' or '.join(near)}?" if near else (
        f"; nothing `{root}` runs reads it")
    problems.append(f"{name} ({origin}) is not used{hint}")
  if problems:
    message = ("; ".join(problems) + " (fix the name, or pass --gin.allow_unused=True "
               "to run anyway)")
    if not allow_unused:
      raise UnusedBindingError(message)
    log.warning("Unused gin bindings (allowed by --gin.allow_unused=True): %s", message)
  return problems


def _parse(text: str, filename: Optional[str]) -> Iterator[Any]:
  """The statements of gin text, without resolving any reference."""
  parser = config_parser.ConfigParser(io.StringIO(text),
                                      gin_config.ParserDelegate(skip_unknown=True))
  for statement in parser:
    if filename and hasattr(statement, "location"):
      statement = statement._replace(location=statement.location._replace(filename=filename))
    yield statement


def _resolve(name: str, paths: Sequence[str]) -> Optional[str]:
  if os.path.isabs(name):
    return name if os.path.exists(name) else None
  for folder in paths:
    candidate = os.path.join(folder, name)
    if os.path.exists(candidate):
      return candidate
  return None


def _user_file_statements(name: str, paths: Sequence[str], bundled_dir: Optional[str],
                          seen: set[str]) -> list[tuple[str, Any]]:
  """(origin, binding statement) of a user file and the user files it includes."""
  path = _resolve(name, paths)
  if path is None:
    return []
  path = os.path.realpath(path)
  if path in seen or (bundled_dir and path.startswith(os.path.realpath(bundled_dir) + os.sep)):
    return []
  seen.add(path)
  out = []
  with open(path) as f:
    text = f.read()
  for st in _parse(text, path):
    if isinstance(st, config_parser.IncludeStatement):
      out += _user_file_statements(st.filename, paths, bundled_dir, seen)
    elif isinstance(st, config_parser.BindingStatement):
      out.append((f"{os.path.basename(path)}:{st.location.line_num}", st))
  return out


def _binding_key(st: Any) -> Optional[tuple[str, str]]:
  """(scope, full selector) under which gin stores a binding statement."""
  if not isinstance(st, config_parser.BindingStatement):
    return None
  if not st.arg_name:  # MACRO = value
    return st.selector, _MACRO
  try:
    selector = gin_config._REGISTRY.get_match(st.selector).selector
  except (KeyError, ValueError):
    return None  # gin itself reports unknown configurables when parsing.
  return st.scope, selector


def _referenced_macros() -> set[str]:
  """Every macro some binding refers to (`%NAME`), reached from a binary or not."""
  names: set[str] = set()

  def walk(value: Any) -> None:
    if isinstance(value, gin_config.ConfigurableReference):
      if value.configurable.selector == _MACRO:
        names.add("/".join(s for s in value.scoped_selector.split("/")[:-1] if s))
    elif isinstance(value, dict):
      for k, v in value.items():
        walk(k)
        walk(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
      for v in value:
        walk(v)

  for args in list(gin_config._CONFIG.values()):
    for value in args.values():
      walk(value)
  return names


def _reachable(root: str) -> tuple[set[tuple[str, str]], set[str], set[str]]:
  """Bindings `root` reads, every macro name, and the configurables reached."""
  config = gin_config._CONFIG
  used: set[tuple[str, str]] = set()
  reached: set[tuple[tuple[str, ...], str]] = set()
  reached_names: set[str] = set()
  macros = {scope for scope, selector in config if selector == _MACRO}

  def visit(scopes: tuple[str, ...], selector: str) -> None:
    if (scopes, selector) in reached:
      return
    reached.add((scopes, selector))
    reached_names.add(selector.split(".")[-1])
    for (scope, bound), args in list(config.items()):
      if bound != selector or bound == _MACRO or not all(
          s in scopes for s in scope.split("/") if s):
        continue
      used.add((scope, bound))
      for value in args.values():
        walk(scopes, value)

  def visit_macro(scopes: tuple[str, ...], name: str) -> None:
    """A macro is global: its value is read where it is referenced."""
    macros.add(name)
    if (scopes, "%" + name) in reached:
      return
    reached.add((scopes, "%" + name))
    args = config.get((name, _MACRO))
    if args is not None:
      used.add((name, _MACRO))
      for value in args.values():
        walk(scopes, value)

  def walk(scopes: tuple[str, ...], value: Any) -> None:
    if isinstance(value, gin_config.ConfigurableReference):
      inner = tuple(s for s in value.scoped_selector.split("/")[:-1] if s)
      if value.configurable.selector == _MACRO:
        visit_macro(scopes, "/".join(inner))
        return
      visit(scopes + tuple(s for s in inner if s not in scopes), value.configurable.selector)
    elif isinstance(value, dict):
      for k, v in value.items():
        walk(scopes, k)
        walk(scopes, v)
    elif isinstance(value, (list, tuple, set, frozenset)):
      for v in value:
        walk(scopes, v)

  for name in (root,) + _ALWAYS_READ:
    try:
      visit((), gin_config._REGISTRY.get_match(name).selector)
    except (KeyError, ValueError):
      continue
  reached_names.discard("macro")
  return used, macros, reached_names
