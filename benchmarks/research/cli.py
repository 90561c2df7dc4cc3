"""`python -m benchmarks.research [--quick | --suite miniature] [--family MODULE:FUNCTION]`:
runs the suite and writes its report."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from typing import Optional, Sequence

from benchmarks import machine
from benchmarks.research import config, experiments, report


def load_family(spec: str, suite: config.Suite):
  """`--family`: "byte", or "package.module:function" where function(suite) returns a
  `family.Family` (the miniature's plugs in this way)."""
  from benchmarks.research import family as family_lib
  if spec == "byte":
    return family_lib.byte_family(suite.sizes, suite.backbone_seeds, suite.pretrain_steps_of)
  module, _, name = spec.partition(":")
  if not name:
    raise config.SuiteError(f"--family={spec!r}: expected 'byte' or 'package.module:function'")
  return getattr(importlib.import_module(module), name)(suite)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.research",
                                   description=__doc__.split("\n\n")[0],
                                   epilog="See `benchmarks/research/__init__.py` for what the "
                                   "suite runs and the claims it tests.")
  parser.add_argument("--quick", action="store_true", help="a smoke run of every stage")
  parser.add_argument("--suite", choices=sorted(config.PRESETS), default=None,
                      help="the preset (default: quick with --quick, else full); 'miniature' "
                      "runs Lester et al. 2021 and 2022 on the real-language miniature family "
                      "(its backbones made first: python -m prompt_tuning.miniature make, and "
                      "make --seed 1) and writes research_miniature.{json,md}")
  parser.add_argument("--family", default=None, help="the backbone family of the Lester et "
                      "al. experiments: 'byte' or 'package.module:function' returning a "
                      "benchmarks.research.family.Family (default: the byte family with "
                      "--quick, none otherwise)")
  parser.add_argument("--out", default=None, help="where results go (default: "
                      "benchmarks/results/<machine>/, or a temporary folder with --quick)")
  parser.add_argument("--work_dir", default=None, help="run folders (cached between runs)")
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args(argv)
  from prompt_tuning.cli import environment
  from prompt_tuning.miniature import NotMade
  environment.configure()
  import logging
  logging.basicConfig(level=logging.WARNING)
  preset = args.suite or ("quick" if args.quick else "full")
  suite = config.PRESETS[preset]
  quick = preset == "quick"
  family_spec = args.family or config.PRESET_FAMILIES.get(preset)
  name = "research" if preset in ("full", "quick") else f"research_{preset}"
  out = args.out or (tempfile.mkdtemp(prefix="research_quick_") if quick
                     else machine.results_dir())
  work_dir = args.work_dir or os.path.join(
      environment.project_cache_dir(), "research_quick" if quick else "research")
  try:
    family = load_family(family_spec, suite) if family_spec else None
    results = experiments.run_suite(suite, work_dir, quick=quick,
                                    show_progress=not args.no_progress, family=family)
  except config.SuiteError as e:
    print(f"research suite failed: {e}", file=sys.stderr)
    return 1
  except NotMade as e:  # a family backbone not made: one line naming its command
    print(f"research suite failed: {e}", file=sys.stderr)
    return 1
  results["preset"] = preset
  report.write(results, suite, out, name)
  for c in results["claims"]:
    print(f"{c['verdict'][:24]:>24}  {c['claim']}: {report.effect_text(c)}; {c['numbers']}")
  print(f"wrote {os.path.join(out, name + '.md')} ({results['seconds'] / 60:.1f} min)")
  return 0
