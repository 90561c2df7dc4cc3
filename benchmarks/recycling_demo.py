"""The recycling demonstration on the quickstart's backbones (issue: prompt recycling).

Backbones: tiny seed 0, tiny seed 1 (same size, other seed) and small seed 0
(other size), all sharing the byte vocabulary; pretrained like the quickstart
(cached under $PROMPT_TUNING_CACHE). Two prompts per backbone, recycled to
every other backbone by every method. Run: python benchmarks/recycling_demo.py
(about 10 minutes on 2 CPU cores with a cold cache). Writes
results/<machine>/recycling.json, recycling.md (`harness.markdown`) and
recycling.png.
"""

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import report  # noqa: E402

SPECS = [("tiny_seed0", "tiny", 0, 1200), ("tiny_seed1", "tiny", 1, 1200),
         ("small_seed0", "small", 0, 3000)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  report.add_machine_flag(parser)
  args = parser.parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from prompt_tuning import backbones
  from prompt_tuning.recycling import harness
  cache = backbones.default_cache_dir()
  models = []
  for name, size, seed, steps in SPECS:
    path = backbones.pretrain(backbones.PretrainConfig(size=size, seed=seed, steps=steps),
                              cache, progress=False)
    models.append(harness.Backbone(name, path, size))
  results = harness.run_grid(models, tempfile.mkdtemp(prefix="recycling_"),
                             prompt_seeds=(0, 1), eval_examples=256)
  report.write("recycling", results, args.machine)
  harness.plot(results, report.path("recycling", args.machine, "png"))
  print("wrote", report.path("recycling", args.machine, "md"))
  print(results["success_rate"])


if __name__ == "__main__":
  main()
