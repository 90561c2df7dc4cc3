"""What each of issue 35's methods costs against prompt tuning, on every miniature size.

    python -m benchmarks.research.cost                 # xs, s, m, l: cost_miniature.{json,md}
    python -m benchmarks.research.cost --sizes xs --rounds 2 --out /tmp/x   # a quick look

Issue 35 point 7: each method's trainable parameters and train-step time
relative to plain prompt tuning, measured on the miniature's own backbones
(the pretrained checkpoints the experiments start from, read from the
cache; `python -m prompt_tuning.miniature make` writes them). The methods
are built as `benchmarks/giants.py` builds them (`giants.specs`: an 8-token
prompt each; ID-PT's generator of width 64; neural recursion's connector of
width 64), plus ATTEMPT over 4 source prompts. Every step is timed with
`giants.part_cost`: one process, the sizes in turn, one compiled step per
method, methods alternating round by round, the median of the rounds. The
inputs have the miniature tasks' lengths (64 input and 16 target tokens);
the frozen reader reads k segments of the open book's length (128 tokens,
the question and one passage), so its rows also say what reading k passages
costs. Textual recursion's row is its second stage, whose step decodes pass
1's answer (8 tokens, greedy) before pass 2 reads it.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks import giants, machine, report

NAME = "cost_miniature"
READER_KS = (1, 5, 20)
ATTEMPT_SOURCES = 4
INPUT_LENGTH, TARGET_LENGTH = 64, 16  # tasks/miniature.py FEATURE_LENGTHS


def methods(backbone: str, config, source_dir: str) -> dict[str, Any]:
  """giants' methods on one miniature backbone, plus ATTEMPT over random frozen
  sources (their values do not change the step's cost)."""
  from prompt_tuning.prompts import attempt
  make = giants.specs(backbone, config)
  rng = np.random.RandomState(0)
  sources = []
  for i in range(ATTEMPT_SOURCES):
    path = os.path.join(source_dir, f"source_{i}.npy")
    np.save(path, rng.uniform(-0.5, 0.5, (giants.P, config.emb_dim)).astype(np.float32))
    sources.append(path)
  base = make["prompt tuning"]
  make[f"ATTEMPT ({ATTEMPT_SOURCES} sources)"] = lambda: base().replace(
      encoder_prompt=attempt.AttemptPrompt(tuple(sources)))
  return make


def measure(size: str, backbone: str, rounds: int, batch_size: int,
            segment_length: int) -> dict[str, Any]:
  """One size's rows: params, step ms and both relative to prompt tuning."""
  from prompt_tuning.miniature import family
  config = family.backbone_config(size)
  with tempfile.TemporaryDirectory() as tmp:
    rows = giants.part_cost(methods(backbone, config, tmp), rounds, batch_size=batch_size,
                            reader_ks=READER_KS, segment_length=segment_length,
                            input_length=INPUT_LENGTH, target_length=TARGET_LENGTH)
  base = rows["prompt tuning"]["trainable_params"]
  for row in rows.values():
    row["params_vs_prompt_tuning"] = row["trainable_params"] / base
  return dict(backbone=backbone, backbone_parameters=family.parameter_count(config), rows=rows)


def markdown(out: dict[str, Any]) -> str:
  """cost_miniature.md from its JSON."""
  sizes = list(out["sizes"])
  names = list(out["sizes"][sizes[0]]["rows"])
  lines = ["# Cost of issue 35's methods on the miniature sizes", "",
           f"Machine: {machine.describe(out['machine'])}, load average "
           f"{out['load_average'][0]:.1f} at the start and {out['load_average_at_end'][0]:.1f} at the "
           f"end. Each size's frozen pretrained "
           f"backbone; batch {out['batch_size']}, {INPUT_LENGTH} input and {TARGET_LENGTH} "
           f"target tokens; the frozen reader reads k segments of {out['segment_length']} "
           f"tokens. One process, the sizes in turn, methods alternating, median of {out['rounds']} "
           f"rounds (compilation excluded). Rerun: `{out['command']}`.", "",
           "Trainable parameters, and a step's wall time and CPU time (the process's, all "
           "threads: steadier than wall time on a shared machine), each relative to prompt "
           "tuning's:", "",
           "| method | " + " | ".join(f"{s} params | {s} step (CPU)" for s in sizes) + " |",
           "| --- |" + " --- | --- |" * len(sizes)]
  for name in names:
    cells = []
    for s in sizes:
      row = out["sizes"][s]["rows"][name]
      cells += [f"{row['trainable_params']:,} ({row['params_vs_prompt_tuning']:.1f}x)",
                f"{row['step_time_vs_prompt_tuning']:.2f}x "
                f"({row['cpu_time_vs_prompt_tuning']:.2f}x)"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "Prompt tuning's own step, wall (CPU) ms: " + ", ".join(
      f"{s} {out['sizes'][s]['rows']['prompt tuning']['step_ms']:.1f} "
      f"({out['sizes'][s]['rows']['prompt tuning']['cpu_ms']:.1f})" for s in sizes)
      + "; backbone parameters: " + ", ".join(
      f"{s} {out['sizes'][s]['backbone_parameters']:,}" for s in sizes) + ".", ""]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="xs,s,m,l", help="comma-separated miniature sizes")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--out", default=None, help="results folder (default: this machine's)")
  report.add_machine_flag(parser, accelerator=False)
  args = parser.parse_args(argv)
  from prompt_tuning.cli import environment
  environment.configure()
  from prompt_tuning.miniature import family
  sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
  backbones = {size: family.require(size) for size in sizes}  # all present before any work
  from prompt_tuning.tasks import dictionary_qa
  out = dict(machine=machine.cpu_info(), load_average=list(os.getloadavg()),
             rounds=args.rounds, batch_size=args.batch_size,
             segment_length=dictionary_qa.SEGMENT_LENGTH,
             command="python -m benchmarks.research.cost " + " ".join(
                 argv if argv is not None else sys.argv[1:]), sizes={})
  start = time.time()
  for size in sizes:
    out["sizes"][size] = measure(size, backbones[size], args.rounds, args.batch_size,
                                 out["segment_length"])
    print(size, {k: round(v["step_time_vs_prompt_tuning"], 2)
                 for k, v in out["sizes"][size]["rows"].items()}, flush=True)
  out["seconds"] = time.time() - start
  out["load_average_at_end"] = list(os.getloadavg())
  print(report.write(NAME, out, args.machine, args.out))


if __name__ == "__main__":
  main()
