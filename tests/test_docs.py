"""The guide cannot rot: the README's and docs' runnable commands run, their
links resolve, and the README's code map says what the structure test checks.

A fenced ```bash block is runnable when the line right before it is
`<!-- runnable -->`. Every command in it (backslash continuations joined,
comments dropped) must exit 0 and print words this file expects of it:

- `prompt-tuning ... --help` lines run in this process through the CLI's
  `main` (argparse exits 0 after printing), so a dozen help texts cost one
  import instead of a dozen interpreter starts;
- any other command runs through bash in a subprocess, with `prompt-tuning`
  standing for `python -m prompt_tuning.cli.main` of this checkout. The docs
  write the user's own paths as shell variables, which the test sets:
  `$CHECKPOINT` is the fixture T5X checkpoint
  ../shared/fixtures/t5x_tiny_checkpoint/checkpoint_3. The quickstart's
  backbone cache and work folder go to a temporary folder
  (PROMPT_TUNING_CACHE, TMPDIR); its compiled programs go to the usual
  compilation cache that the other binaries' tests share.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, fixture_path

README = os.path.join(REPO_ROOT, "README.md")
DOCS = os.path.join(REPO_ROOT, "docs")
RUNNABLE = "<!-- runnable -->"
CODE_MAP = "<!-- code-map -->"

# The README's first block, verbatim; `.ci/run` runs the second line.
FIRST_COMMANDS = [
    "python3 -m pip install -e . && prompt-tuning quickstart",
    "python3 -m pip install -e '.[test]' && python3 -m pytest -n 2",
]

# What each runnable command (by subcommand) must print, stdout and stderr
# together. A runnable command not named here fails the test: say what it
# should print when you mark it runnable.
EXPECTED = {
    "quickstart": ["[1/3] Backbone", "[3/3] Evaluating", "trained prompt", "no prompt",
                   "exact match"],
    "tasks": ["super_glue_rte_v102", "registered"],
    "inspect": ["format:     msgpack  step: 3", "token_embedder/embedding", "parameters:"],
}


def _doc_files() -> list[str]:
  docs = sorted(os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))
  return [README, *docs]


def runnable_blocks(text: str) -> list[list[str]]:
  """The commands of each ```bash block marked runnable, continuations joined."""
  lines = text.split("\n")
  blocks = []
  for i, line in enumerate(lines):
    if line.strip() != RUNNABLE:
      continue
    if i + 1 >= len(lines) or lines[i + 1].strip() != "```bash":
      raise AssertionError(f"{RUNNABLE} must sit right above a ```bash block (line {i + 1})")
    commands, current = [], ""
    for body in lines[i + 2:]:
      if body.strip() == "```":
        break
      body = body.split(" #")[0].rstrip() if not body.lstrip().startswith("#") else ""
      current += body[:-1] + " " if body.endswith("\\") else body
      if not body.endswith("\\"):
        if current.strip():
          commands.append(" ".join(current.split()))
        current = ""
    else:
      raise AssertionError(f"unclosed runnable block after line {i + 1}")
    blocks.append(commands)
  return blocks


def _commands() -> list[tuple[str, str]]:
  """(file, command) for every runnable command of the README and docs/."""
  out = []
  for path in _doc_files():
    for block in runnable_blocks(open(path).read()):
      out += [(os.path.relpath(path, REPO_ROOT), c) for c in block]
  return out


def _is_help(command: str) -> bool:
  return command.startswith("prompt-tuning") and command.split()[-1] == "--help"


def test_runnable_blocks_are_found_only_behind_the_marker():
  text = ("```bash\nprompt-tuning not-run\n```\n"
          f"{RUNNABLE}\n```bash\n# a comment\nprompt-tuning tasks list \\\n  'rte'  # why\n"
          "prompt-tuning --help\n```\n")
  assert runnable_blocks(text) == [["prompt-tuning tasks list 'rte'", "prompt-tuning --help"]]
  with pytest.raises(AssertionError, match="right above"):
    runnable_blocks(f"{RUNNABLE}\n\n```bash\nx\n```\n")


def test_readme_starts_with_the_two_commands_and_stays_short():
  text = open(README).read()
  lines = text.split("\n")
  assert lines[:6] == ["# prompt-tuning", "", "```bash", *FIRST_COMMANDS, "```"], lines[:6]
  assert len(text.rstrip("\n").split("\n")) <= 300, "the README is a guide: at most 300 lines"
  ci = open(os.path.join(REPO_ROOT, ".ci", "run")).read()
  assert FIRST_COMMANDS[1] in ci, ".ci/run must run the README's second command verbatim"


def test_every_subcommand_has_a_runnable_help_line_and_it_runs(capsys):
  from prompt_tuning.cli import main as main_lib
  parser = main_lib.build_parser()
  subcommands = set(next(a for a in parser._actions  # pylint: disable=protected-access
                         if a.dest == "command").choices)
  helps = [c for _, c in _commands() if _is_help(c)]
  documented = {c.split()[1] if len(c.split()) > 2 else "" for c in helps}
  missing = sorted((subcommands | {""}) - documented)
  assert not missing, f"no runnable `prompt-tuning SUB --help` line for {missing}"
  for command in helps:
    argv = command.split()[1:]
    with pytest.raises(SystemExit) as exit_info:
      main_lib.main(argv)
    assert exit_info.value.code in (0, None), command
    out = capsys.readouterr().out
    usage = " ".join(["usage: prompt-tuning", *argv[:-1]])
    assert usage in " ".join(out.split()), (command, out[:500])


def test_the_guide_runs_the_quickstart_tasks_and_inspect():
  ran = {c.split()[1] for _, c in _commands() if not _is_help(c)}
  assert {"quickstart", "tasks", "inspect"} <= ran, ran


def _shell_commands():
  return [pytest.param(c, id=f"{f}:{c[:60]}") for f, c in _commands() if not _is_help(c)]


@pytest.mark.parametrize("command", _shell_commands())
def test_runnable_command_exits_0_and_says_what_it_should(command, tmp_path):
  from prompt_tuning.cli import environment
  words = command.split()
  assert words[0] == "prompt-tuning", f"runnable commands are prompt-tuning's: {command}"
  assert words[1] in EXPECTED, (
      f"{command!r} is marked runnable; add what it must print to EXPECTED in {__file__}")
  # The compilation cache outlives the temporary project cache, as it does for users.
  jax_cache = os.path.join(environment.project_cache_dir(), "jax_cache")
  os.makedirs(jax_cache, exist_ok=True)
  os.symlink(jax_cache, tmp_path / "jax_cache")
  env = dict(os.environ, PROMPT_TUNING_CACHE=str(tmp_path), TMPDIR=str(tmp_path),
             PYTHONPATH=REPO_ROOT, PT_PYTHON=sys.executable)
  if "$CHECKPOINT" in command:  # Only these need the shared fixtures.
    env["CHECKPOINT"] = fixture_path("t5x_tiny_checkpoint", "checkpoint_3")
  script = 'prompt-tuning() { "$PT_PYTHON" -m prompt_tuning.cli.main "$@"; }\n' + command
  result = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  said = result.stdout + result.stderr
  assert result.returncode == 0, (command, said[-3000:])
  for word in EXPECTED[words[1]]:
    assert word in said, (command, word, said[-3000:])


def _layers_of_the_map() -> list[set[str]]:
  lines = open(README).read().split("\n")
  start = lines.index(CODE_MAP)
  assert lines[start + 1].startswith("```"), "the code map is the fenced block after the marker"
  layers = []
  for line in lines[start + 2:]:
    if line.startswith("```"):
      return layers
    names = []
    for token in line.split():
      match = re.fullmatch(r"([a-z_]+)(\.py|/)", token)
      if not match:
        break
      names.append(match.group(1))
    assert names, f"a code-map line must start with the layer's modules: {line!r}"
    layers.append(set(names))
  raise AssertionError("the code map's block is not closed")


def test_the_readme_code_map_lists_the_structure_tests_layers_in_order():
  """`LAYERS` in tests/test_structure.py decides; the `python -m` shims are not packages."""
  from tests.test_structure import LAYERS
  expected = [set(layer) - {"__main__"} for layer in LAYERS]
  got = _layers_of_the_map()
  assert [sorted(x) for x in got] == [sorted(x) for x in expected], (
      "README's code map vs tests/test_structure.py LAYERS (bottom to top):\n"
      f"map:    {[sorted(x) for x in got]}\nLAYERS: {[sorted(x) for x in expected]}")


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
  anchors, fence = set(), False
  for line in open(path).read().split("\n"):
    if line.startswith("```"):
      fence = not fence
    elif not fence and re.match(r"#{1,6} ", line):
      anchors.add(_slug(line.lstrip("#")))
  return anchors


# Results move to benchmarks/results/<machine>/; until that folder exists,
# links into it are not checked.
_NOT_YET = os.path.join(REPO_ROOT, "benchmarks", "results")


def test_every_relative_link_points_to_an_existing_file_and_heading():
  broken = []
  for path in [*_doc_files(), os.path.join(REPO_ROOT, "CHANGELOG.md")]:
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)  # code is not links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+:", target):
        continue  # http(s), mailto
      file_part, _, anchor = target.partition("#")
      resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
          if file_part else path
      where = f"{os.path.relpath(path, REPO_ROOT)}: {target}"
      if not os.path.exists(resolved):
        if not (resolved + os.sep).startswith(_NOT_YET + os.sep) or os.path.exists(_NOT_YET):
          broken.append(where)
        continue
      if anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
        broken.append(where + " (no such heading)")
  assert not broken, "broken links:\n" + "\n".join(broken)
