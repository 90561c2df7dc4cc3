"""Runs many `prompt-tuning` command lines in one fresh process, as the binary runs them.

    python -m tests.binary_runner CASES.json RESULTS.json

CASES.json is a list of {"name", "argv"}. Each argv goes to
`prompt_tuning.cli.main.main`, the function behind the `prompt-tuning` entry
point, with gin cleared first. File descriptors 1 and 2 are redirected to a
file per case, so that whatever reaches the terminal is caught: Python's
output, logging, C++ logs and tracebacks printed from other threads. An
exception that escapes `main` is printed with its traceback, as the
interpreter would, and counts as exit code 1. RESULTS.json gets
{name: {"code", "output"}}. Starting the binary once for all cases saves its
imports (about 10 s) per case; what the process prints while it exits (late
thread callbacks included) is left on its own stdout and stderr for the
caller to check.
"""

import json
import os
import sys
import tempfile
import traceback


def _run(argv: list, out_path: str) -> int:
  import gin
  from prompt_tuning.cli import main as main_lib
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  with open(out_path, "w") as out:
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    try:
      gin.clear_config()
      code = main_lib.main(argv)
    except SystemExit as e:  # argparse
      code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # pylint: disable=broad-except  (as an uncaught error would end)
      traceback.print_exc()
      code = 1
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      for fd in saved:
        os.close(fd)
  return code


def main() -> None:
  cases_file, results_file = sys.argv[1:3]
  with open(cases_file) as f:
    cases = json.load(f)
  # Imported before the first case, so that their start-up lines are not a case's.
  import jax  # noqa: F401
  import orbax.checkpoint  # noqa: F401
  import prompt_tuning.tasks  # noqa: F401
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for n, case in enumerate(cases):
      out_path = os.path.join(tmp, f"{n}.txt")
      code = _run(case["argv"], out_path)
      with open(out_path) as f:
        results[case["name"]] = dict(code=code, output=f.read())
  with open(results_file, "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main()
