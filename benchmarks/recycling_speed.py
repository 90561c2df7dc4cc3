"""Recycling speed on CPU: fitting the linear map on a 4000 x 768 support, and
recycling one 100 x 768 prompt with it (T5 base width on both sides).

Run: python benchmarks/recycling_speed.py. Medians of repeated runs, in one
process; writes results/<machine>/recycling_speed.json and .md (numpy alone:
the folder names the CPU even on a GPU host).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import machine, report  # noqa: E402

REPEATS = 7


def _median_seconds(fn, repeats=REPEATS):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure() -> dict:
  from prompt_tuning.recycling import methods
  rng = np.random.RandomState(0)
  source = rng.normal(size=(4000, 768)).astype(np.float32)
  target = rng.normal(size=(4000, 768)).astype(np.float32)
  prompt = rng.normal(size=(100, 768)).astype(np.float32)
  fit = _median_seconds(lambda: methods.fit_linear(source, target))
  recycler = methods.fit_linear(source, target)
  apply = _median_seconds(lambda: recycler(prompt), repeats=50)
  fit_lc = _median_seconds(lambda: methods.fit_linear_combination(source, target), repeats=3)
  lc = methods.fit_linear_combination(source, target)
  apply_lc = _median_seconds(lambda: lc(prompt), repeats=20)
  return dict(fit_linear_4000x768_s=fit, recycle_100x768_linear_s=apply,
              fit_linear_combination_4000x768_s=fit_lc,
              recycle_100x768_linear_combination_s=apply_lc,
              targets=dict(fit_linear_s=2.0, recycle_s=0.05),
              numpy=np.__version__, cores=os.cpu_count(), machine=machine.cpu_info())


def markdown(r: dict) -> str:
  """recycling_speed.md from its JSON (`measure`)."""
  return ("# Recycling speed (CPU)\n\n"
          f"Median of repeated runs in one process, {r['cores']} cores, numpy "
          f"{r['numpy']}. Rerun: `python benchmarks/recycling_speed.py`.\n\n"
          "| operation | time | target |\n| --- | --- | --- |\n"
          f"| fit the linear map, 4000 x 768 support | {1000 * r['fit_linear_4000x768_s']:.0f} ms "
          "| under 2 s |\n"
          f"| recycle one 100 x 768 prompt (linear) | {1000 * r['recycle_100x768_linear_s']:.2f} ms"
          " | under 50 ms |\n"
          "| fit linear combination (pseudo-inverse) | "
          f"{1000 * r['fit_linear_combination_4000x768_s']:.0f} ms | |\n"
          "| recycle one prompt (linear combination) | "
          f"{1000 * r['recycle_100x768_linear_combination_s']:.2f} ms | |\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  report.add_machine_flag(parser, accelerator=False)
  args = parser.parse_args()
  results = measure()
  report.write("recycling_speed", results, args.machine or machine.slug(accelerator=False))
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
