"""Files benchmark results and writes each markdown table from its JSON.

    python -m benchmarks.report              # rewrite every results/*/NAME.md from NAME.json
    python -m benchmarks.report --check      # exit 1 where a table differs from its JSON
    python -m benchmarks.report benchmarks/results/amd-epyc-avx2/train_step.json  # only it

A result lives at `benchmarks/results/<machine>/NAME.json` (`machine.py`
names the folder), its table next to it as NAME.md. Whatever writes a result
owns its JSON format and renders it with a `markdown(result)` function, listed
below by the result's name; scripts save through `write`, and this tool rewrites the
tables of committed results from their JSON, so that a table cannot say what
its JSON does not. A renderer returns None for a result it did not write (a
file written by hand from a log); such markdown, and markdown with no
renderer, is left as it is. Lines of an existing table from NOTES_MARKER on
are hand-written notes and are kept.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # `python benchmarks/report.py` as well as `-m`
  sys.path.insert(0, ROOT)

from benchmarks import machine  # noqa: E402

NOTES_MARKER = "<!-- notes: kept when the script rewrites this file -->"

# A result's name (the JSON file's stem, or its start: `train_step_remat_full`
# is a `train_step`) -> the function that renders it. The longest match wins.
RENDERERS = {
    "attention_loop": "benchmarks.attention_loop:markdown",
    "giants": "benchmarks.giants:markdown",
    "bf16_cpu": "benchmarks.bf16_cpu:markdown",
    "cost_miniature": "benchmarks.research.cost:markdown",
    "gpu": "benchmarks.gpu:markdown",
    "idpt": "benchmarks.research.idpt:markdown",
    "inference": "benchmarks.inference:markdown",
    "memory": "benchmarks.memory:markdown",
    "microbatches": "benchmarks.microbatches:markdown",
    "miniature": "benchmarks.miniature:markdown",
    "prompt_methods": "benchmarks.prompt_methods:markdown",
    "recycling": "prompt_tuning.recycling.harness:markdown",
    "recycling_speed": "benchmarks.recycling_speed:markdown",
    "recursion": "benchmarks.research.recursion:markdown",
    "research": "benchmarks.research.report:markdown",
    "scaling": "benchmarks.scaling:markdown",
    "serving": "benchmarks.serving:markdown",
    "step_ceiling": "benchmarks.step_ceiling:markdown",
    "open_book": "benchmarks.open_book:markdown",
    "step_profile": "benchmarks.step_profile:markdown",
    "train_step": "benchmarks.train_step:markdown",
    "transfer": "benchmarks.research.transfer:markdown",
    "train_step_xla_defaults": "benchmarks.train_step:xla_defaults_markdown",
}


def renderer(name: str) -> Optional[Callable[[dict[str, Any]], Optional[str]]]:
  """The markdown function for a result called `name`, or None."""
  matches = [k for k in RENDERERS if name == k or name.startswith(k + "_")]
  if not matches:
    return None
  module, _, function = RENDERERS[max(matches, key=len)].partition(":")
  return getattr(importlib.import_module(module), function)


def render(json_path: str) -> Optional[str]:
  """The markdown of one result file, hand-written notes included; None where the
  tool does not write this table."""
  fn = renderer(os.path.splitext(os.path.basename(json_path))[0])
  if fn is None:
    return None
  with open(json_path) as f:
    text = fn(json.load(f))
  if text is None:
    return None
  md_path = os.path.splitext(json_path)[0] + ".md"
  if os.path.exists(md_path):
    with open(md_path) as f:
      old = f.read()
    if NOTES_MARKER in old:
      text += old[old.index(NOTES_MARKER):]
  return text


def path(name: str, machine_name: Optional[str] = None, ext: str = "json") -> str:
  """results/<machine>/<name>.<ext> (this machine's folder when not given)."""
  return os.path.join(machine.results_dir(machine_name), f"{name}.{ext}")


def write(name: str, result: dict[str, Any], machine_name: Optional[str] = None,
          out_dir: Optional[str] = None) -> str:
  """Saves a result as results/<machine>/NAME.json (or `out_dir`/NAME.json) and
  its table as NAME.md; returns the table."""
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, f"{name}.json") if out_dir else path(name, machine_name)
  with open(json_path, "w") as f:
    json.dump(result, f, indent=1)
  text = render(json_path)
  if text is None:
    raise ValueError(f"no markdown renderer writes {json_path}")
  with open(os.path.splitext(json_path)[0] + ".md", "w") as f:
    f.write(text)
  return text


def add_machine_flag(parser: argparse.ArgumentParser, accelerator: bool = True) -> None:
  """`--machine`: the results folder, by default this machine's (`machine.slug`; a
  script whose work never runs on a GPU passes `accelerator=False`)."""
  where = "its GPU's, else its CPU's" if accelerator else "its CPU's"
  parser.add_argument("--machine", default=None,
                      help="results folder under benchmarks/results/ (default: this machine's, "
                      f"named after {where} model and ISA)")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("paths", nargs="*", help="result JSON files (default: all)")
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a table differs from its JSON")
  args = parser.parse_args(argv)
  paths = args.paths or sorted(glob.glob(os.path.join(machine.RESULTS, "*", "*.json")))
  stale = []
  for json_path in paths:
    text = render(json_path)
    md_path = os.path.splitext(json_path)[0] + ".md"
    shown = os.path.relpath(md_path, ROOT)
    if text is None:
      print(f"left as it is: {shown}")
      continue
    old = open(md_path).read() if os.path.exists(md_path) else None
    if old == text:
      continue
    stale.append(shown)
    if not args.check:
      with open(md_path, "w") as f:
        f.write(text)
    print(f"{'differs' if args.check else 'wrote'}: {shown}")
  return 1 if args.check and stale else 0


if __name__ == "__main__":
  sys.exit(main())
