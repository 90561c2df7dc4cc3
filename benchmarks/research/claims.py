"""The claims table: every claim with its control, test, effect (95% interval), p and
verdict (`stats.verdict`); the byte family's claims here, the family
experiments' in `experiments_family.claims`."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.research import stats
from benchmarks.research.config import Suite
from benchmarks.research.methods import prompt_tuning
from benchmarks.research.runs import correct_of

# The byte family's retired claims: what the miniature replaces, and why.
RETIRED = [
    ("Lester 2021: the fine-tuning minus prompt-tuning gap shrinks as the backbone grows",
     "the same gap at the smallest size",
     "the byte family's sizes are not ordered by quality (the medium backbone is a worse "
     "model than the small one) and record none, and fine-tuning was never tuned: the size "
     "axis is not tested; replaced by the miniature"),
    ("Lester 2021: sampled-vocabulary and class-label inits beat random uniform",
     "random-uniform init",
     "sampled vocabulary draws byte ids 0-258, of which about 26 occur in pretraining, so it "
     "compares init scales rather than vocabularies; replaced by the miniature"),
    ("Lester 2022: prompts can be recycled across backbones",
     "a prompt answering at random, under the same success rule",
     "the maps are fitted on 256 byte rows, about 230 of them never seen in pretraining; the "
     "earlier 'reproduced' rested on 'any success' and is withdrawn; replaced by the miniature"),
]


def _values(rows, **match) -> list[float]:
  return [r["score"] for r in rows if all(r[k] == v for k, v in match.items())]


def _mean_sd(values: list[float]) -> str:
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return f"{np.mean(values):.1f} +- {sd:.1f}" if values else "-"


def _across_seeds(name: str, control: str, a: list[float], b: list[float],
                  unit: str = "seeds") -> dict[str, Any]:
  numbers = f"{_mean_sd(a)} vs {_mean_sd(b)} ({len(a)} vs {len(b)} {unit}, test split)"
  if len(a) < 2 or len(b) < 2:
    return stats.untestable(name, control, "fewer than two seeds a side", numbers)
  return stats.claim(name, control, stats.permutation_test(a, b), numbers=numbers)


def byte_claims(results: dict[str, Any], suite: Suite) -> list[dict[str, Any]]:
  out = []
  size = suite.sizes[0]
  if "length" in results:
    rows, default = results["length"], suite.prompt_length
    if 1 in suite.lengths and default in suite.lengths and default != 1:
      out.append(_across_seeds(
          f"Lester 2021: a {default}-token prompt beats a 1-token prompt ({suite.length_task}, "
          f"byte {size})", "a 1-token prompt", _values(rows, length=default),
          _values(rows, length=1)))
  for r in results.get("ensemble", ()):
    selected = np.frombuffer(r["selected_correct"].encode(), np.uint8) == ord("1")
    vote = np.frombuffer(r["vote_correct"].encode(), np.uint8) == ord("1")
    where = f"{r['task']}, byte {r['size']}, {r['members']} prompts"
    out.append(stats.claim(
        f"Lester 2021: an ensemble beats the best single prompt ({where})",
        f"the single prompt with the best validation score (seed {r['selected_seed']})",
        stats.mcnemar(vote, selected),
        numbers=f"vote {r['vote']:.1f} vs selected {r['selected_score']:.1f} (test split)"))
    out.append(stats.claim(
        f"Lester 2021: an ensemble beats the average prompt ({where})",
        "the members' mean accuracy on each example",
        stats.paired_bootstrap(100.0 * vote, 100.0 * np.asarray(r["mean_correct"])),
        numbers=f"vote {r['vote']:.1f} vs mean {r['single_mean']:.1f} +- {r['single_std']:.1f}"))
  pt = prompt_tuning(suite).name
  if "methods" in results:
    rows = results["methods"]
    attempt = next((r["method"] for r in rows if r["method"].startswith("ATTEMPT")), None)
    if attempt:
      out.append(_across_seeds(
          f"Asai 2022: ATTEMPT with good source prompts beats prompt tuning from scratch at "
          f"equal steps ({suite.methods_task}, byte {size})", "prompt tuning from scratch",
          _values(rows, method=attempt), _values(rows, method=pt)))
  if "multitask" in results:
    rows = results["multitask"]
    name = lambda prefix: next(r["method"] for r in rows if r["method"].startswith(prefix))  # noqa: E731
    out.append(_across_seeds(
        f"He 2022: HyperPrompt beats multi-task prompt tuning at equal trainable parameters "
        f"({suite.multitask_task}, byte {size})", "a multi-task prompt of equal parameters",
        _values(rows, method=name("HyperPrompt")), _values(rows, method=name("multi-task prompt"))))
    out.append(_across_seeds(
        f"Levine 2022: ID-PT beats one static prompt on the multi-task mixture "
        f"({suite.multitask_task}, byte {size})", "one static prompt",
        _values(rows, method=name("ID-PT")), _values(rows, method=pt)))
  # The byte report lists what it retired (unless its own family rows say it); a run
  # with no byte experiment (the miniature preset) is not a byte report.
  if suite.byte_experiments and results.get("family", {}).get("name") != "byte":
    for name, control, reason in RETIRED:
      out.append(stats.untestable(f"{name} (byte family)", control, reason))
  return out


def claims(results: dict[str, Any], suite: Suite) -> list[dict[str, Any]]:
  """Every claim of the results: the byte family's, then the family experiments'."""
  out = byte_claims(results, suite)
  if "family" in results:
    from benchmarks.research import experiments_family
    out += experiments_family.claims(results["family"], suite)
  return out
