"""`python -m benchmarks.research [--quick] [--family MODULE:FUNCTION]`: runs the suite and
writes its report."""

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
  environment.configure()
  import logging
  logging.basicConfig(level=logging.WARNING)
  suite = config.QUICK if args.quick else config.FULL
  out = args.out or (tempfile.mkdtemp(prefix="research_quick_") if args.quick
                     else machine.results_dir())
  work_dir = args.work_dir or os.path.join(
      environment.project_cache_dir(), "research_quick" if args.quick else "research")
  try:
    family = load_family(args.family, suite) if args.family else None
    results = experiments.run_suite(suite, work_dir, quick=args.quick,
                                    show_progress=not args.no_progress, family=family)
  except config.SuiteError as e:
    print(f"research suite failed: {e}", file=sys.stderr)
    return 1
  report.write(results, suite, out)
  for c in results["claims"]:
    print(f"{c['verdict'][:24]:>24}  {c['claim']}: {report.effect_text(c)}; {c['numbers']}")
  print(f"wrote {os.path.join(out, 'research.md')} ({results['seconds'] / 60:.1f} min)")
  return 0
