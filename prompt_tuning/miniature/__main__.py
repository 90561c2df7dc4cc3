"""`python -m prompt_tuning.miniature make|status|book`: makes the real-language family
(and `book`: the dictionary's open book for the frozen reader)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m prompt_tuning.miniature",
                                   description=__doc__)
  parser.add_argument("command", choices=("make", "status", "book"))
  parser.add_argument("--sizes", default=None, help="comma-separated sizes (default: all)")
  parser.add_argument("--steps", type=int, default=None, help="pretraining steps per size")
  parser.add_argument("--longer", default=None,
                      help="sizes trained longer, e.g. l=600 (when a larger size is worse)")
  parser.add_argument("--rates", default=None,
                      help="sizes trained at their own peak learning rate, e.g. l=0.001")
  parser.add_argument("--seed", type=int, default=None,
                      help="pretraining seed (weights and data order; default: PretrainConfig's). "
                      "Recycling reads a second seed of every size: make --seed 1")
  parser.add_argument("--cache_dir", default=None, help="default: $PROMPT_TUNING_CACHE or "
                      "~/.cache/prompt_tuning")
  args = parser.parse_args(argv)
  if args.cache_dir:
    os.environ["PROMPT_TUNING_CACHE"] = args.cache_dir  # read when the tasks find the corpus
  from prompt_tuning import miniature
  import dataclasses
  cfg = miniature.PretrainConfig()
  if args.steps:
    cfg = dataclasses.replace(cfg, steps=args.steps)
  if args.seed is not None:
    cfg = dataclasses.replace(cfg, seed=args.seed)
  if args.longer:
    pairs = [item.split("=") for item in args.longer.split(",")]
    cfg = dataclasses.replace(cfg, longer=tuple((k, int(v)) for k, v in pairs))
  if args.rates:
    pairs = [item.split("=") for item in args.rates.split(",")]
    cfg = dataclasses.replace(cfg, rates=tuple((k, float(v)) for k, v in pairs))
  sizes = args.sizes.split(",") if args.sizes else list(miniature.SIZES)
  for size in sizes:
    if size not in miniature.SIZES:
      print(f"error: unknown size {size!r}; expected some of {list(miniature.SIZES)}",
            file=sys.stderr)
      return 2
  if args.command == "book":
    from prompt_tuning.retrieval import dictionary_book
    try:
      from prompt_tuning.tasks.miniature import find
      book = dictionary_book.prepare(find(), log=lambda m: print(m, flush=True))
    except (miniature.NotMade, ImportError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(f"open book: {book.path}")
    return 0
  if args.command == "status":
    for size in sizes:
      try:
        path = miniature.require(size, cfg)
      except (miniature.NotMade, Exception) as e:  # pylint: disable=broad-except
        print(f"{size}: {e}")
        continue
      with open(os.path.join(path, "quality.json")) as f:
        q = json.load(f)
      print(f"{size}: {q['parameters']:,} parameters, held-out loss {q['heldout_loss']:.3f}, "
            f"token accuracy {q['heldout_token_accuracy']:.1f}% ({path})")
    return 0
  start = time.time()
  try:
    family = miniature.make(cfg, sizes, log=lambda m: print(m, flush=True))
  except (miniature.FamilyNotDone, miniature.NotMade, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"family done in {time.time() - start:.0f} s (this process): "
        + ", ".join(f"{r['size']} {r['heldout_loss']:.3f}" for r in family["sizes"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
