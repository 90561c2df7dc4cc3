"""The recycling demonstration on the quickstart's backbones (issue: prompt recycling).

Backbones: tiny seed 0, tiny seed 1 (same size, other seed) and small seed 0
(other size), all sharing the byte vocabulary; pretrained like the quickstart
(cached under $PROMPT_TUNING_CACHE). Two prompts per backbone, recycled to
every other backbone by every method. Run: python benchmarks/recycling_demo.py
(about 10 minutes on 2 CPU cores with a cold cache). Writes recycling.md,
recycling_results.json and recycling.png next to this file.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from prompt_tuning import quickstart  # noqa: E402
from prompt_tuning.recycling import harness  # noqa: E402

SPECS = [("tiny_seed0", "tiny", 0, 1200), ("tiny_seed1", "tiny", 1, 1200),
         ("small_seed0", "small", 0, 3000)]


def main():
  cache = quickstart.default_cache_dir()
  backbones = []
  for name, size, seed, steps in SPECS:
    path = quickstart.pretrain(quickstart.PretrainConfig(size=size, seed=seed, steps=steps),
                               cache, progress=False)
    backbones.append(harness.Backbone(name, path, size))
  results = harness.run_grid(backbones, tempfile.mkdtemp(prefix="recycling_"),
                             prompt_seeds=(0, 1), eval_examples=256)
  for p in harness.write_report(results, os.path.dirname(os.path.abspath(__file__))):
    print("wrote", p)
  print(results["success_rate"])


if __name__ == "__main__":
  main()
