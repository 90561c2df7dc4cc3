"""Files the miniature family's record: each size's parameters, held-out quality and time.

    python -m prompt_tuning.miniature make     # first: makes (or finds) the family
    python benchmarks/miniature.py             # results/<machine>/miniature.json and .md

Reads each made size's `quality.json` (a size not yet made is listed as
missing, and the family is not done), and adds the machine it was made on
(`machine.cpu_info()`, the folder's name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
  sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import machine, report  # noqa: E402


def markdown(result: dict[str, Any]) -> str:
  """The family's table, from its JSON."""
  pre = result["pretrain"]
  lines = [
      "# The miniature family (GCIDE, span corruption)", "",
      f"Machine: {machine.describe(result['machine'])}. Made by `python -m "
      "prompt_tuning.miniature make`; filed by `python benchmarks/miniature.py`.", "",
      f"Corpus: {result['corpus']['entries']:,} entries, {result['corpus']['held_out_entries']:,} "
      f"held out (sha256 {result['corpus']['held_out_sha256'][:12]}...), "
      f"{result['corpus']['pieces']:,} SentencePiece pieces, "
      f"{result['corpus']['tokens']['train']:,} pretraining tokens. Every size: "
      f"{pre['steps']} steps of {pre['batch_size']} span-corruption chunks "
      f"({pre['steps'] * pre['batch_size'] * 70:,} corpus tokens), AdamW at "
      f"{pre['learning_rate']:g}"
      + ("; trained longer (a larger size came out worse): "
         + ", ".join(f"{k} {v} steps" for k, v in pre.get("longer", [])) if pre.get("longer")
         else "")
      + ("; at their own peak rate: " + ", ".join(f"{k} {v:g}" for k, v in pre.get("rates", []))
         if pre.get("rates") else "") + ".", "",
      "Quality: on the held-out entries' text, span-corruption cross-entropy per target "
      "token (EOS included) and token accuracy (argmax = target), "
      "1,024 chunks of 70 tokens.", "",
      "| size | parameters | steps | peak rate | held-out loss | token accuracy | train wall s "
      "| train CPU s |",
      "|------|-----------:|------:|----------:|--------------:|---------------:|-------------:"
      "|------------:|"]
  for r in result["sizes"]:
    own = r.get("pretrain", {})
    lines.append(f"| {r['size']} | {r['parameters']:,} | {own.get('steps', pre['steps'])} | "
                 f"{own.get('learning_rate', pre['learning_rate']):g} | {r['heldout_loss']:.3f} | "
                 f"{r['heldout_token_accuracy']:.1f}% | {r['train_wall_seconds']:.0f} | "
                 f"{r['train_cpu_seconds']:.0f} |")
  lines += ["", "Family done (no larger size worse): "
            + ("yes" if result["done"] else "no: " + "; ".join(result["problems"])), ""]
  if result.get("note"):
    lines += [result["note"], ""]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--note", default="", help="a sentence filed with the record")
  parser.add_argument("--longer", default=None, help="as make's --longer, e.g. m=600,l=600")
  report.add_machine_flag(parser, accelerator=False)
  args = parser.parse_args(argv)
  from prompt_tuning import miniature
  corpus = miniature.corpus()
  cfg = miniature.PretrainConfig()
  if args.longer:
    cfg = dataclasses.replace(cfg, longer=tuple(
        (k, int(v)) for k, v in (item.split("=") for item in args.longer.split(","))))
  sizes, missing = [], []
  for size in miniature.SIZES:
    try:
      path = miniature.require(size, cfg)
    except miniature.NotMade:
      missing.append(size)
      continue
    with open(os.path.join(path, "quality.json")) as f:
      sizes.append(json.load(f))
  problems = miniature.check_order(sizes) + [f"{s} not made yet" for s in missing]
  result = {"corpus": corpus.record(), "pretrain": dataclasses.asdict(cfg), "sizes": sizes,
            "missing": missing, "done": not problems, "problems": problems,
            "machine": machine.cpu_info(), "note": args.note}
  print(report.write("miniature", result, args.machine))
  return 0


if __name__ == "__main__":
  sys.exit(main())
