"""Aggregates over seeds, the check that a figure can separate methods, and the
claims' verdicts."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from benchmarks.research.config import Suite, SuiteError
from benchmarks.research.methods import FINETUNE, prompt_tuning

def aggregate(rows: Sequence[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
  """Mean and standard deviation over seeds, grouped by `keys`."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  out = []
  for key, members in groups.items():
    scores = np.asarray([m["score"] for m in members], np.float64)
    out.append({**dict(zip(keys, key)), "mean": float(scores.mean()),
                "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
                "seeds": len(scores), "scores": scores.tolist(),
                "trainable_parameters": members[0]["trainable_parameters"]})
  return out


def check_separates(rows: Sequence[dict[str, Any]], experiment: str,
                    refuse: bool = True) -> list[str]:
  """Fails on a task where every run of every method scored the same 0% or 100%
  (with `refuse=False`, returns those messages instead)."""
  by_task: dict[str, set[float]] = {}
  for r in rows:
    by_task.setdefault(f"{r['task']} ({r['size']})", set()).add(round(r["score"], 6))
  problems = []
  for task, scores in by_task.items():
    if len(scores) == 1 and next(iter(scores)) in (0.0, 100.0):
      problems.append(
          f"{experiment}: every method and seed scores {next(iter(scores)):.0f}% on {task}; "
          "this figure cannot separate methods: make the task harder (or easier) instead "
          "of reporting it")
  if problems and refuse:
    raise SuiteError(problems[0])
  return problems



def _verdict(ok: bool) -> str:
  return "reproduced" if ok else "not reproduced"


def gap_verdict(gaps: Sequence[float]) -> str:
  """Lester et al. 2021's scale claim from fine-tuning minus prompt-tuning points per
  size (smallest first): fine-tuning's lead is smaller at the largest size than at the
  smallest. With no lead at any size there is nothing to close, whichever way the
  negative gaps move, so the claim is not tested."""
  if len(gaps) < 2:
    return "not tested (one size)"
  if max(gaps) <= 0:
    return "not tested (no gap: prompt tuning >= fine-tuning at every size)"
  return _verdict(gaps[-1] < gaps[0])


def pm(group: dict[str, Any]) -> str:
  """An aggregated group as "mean +- sd"."""
  return f"{group['mean']:.1f} +- {group['std']:.1f}"


def claims(results: dict[str, Any], suite: Suite) -> list[dict[str, str]]:
  out = []
  scale = aggregate(results["scale"], "task", "size", "method")
  ft, pt = FINETUNE.name, prompt_tuning(suite).name
  for task in suite.scale_tasks:
    gaps = []
    for size in suite.sizes:
      by = {r["method"]: r["mean"] for r in scale if r["task"] == task and r["size"] == size}
      gaps.append(by[ft] - by[pt])
    text = ", ".join(f"{s}: {g:+.1f}" for s, g in zip(suite.sizes, gaps))
    out.append(dict(claim=f"Lester 2021: the fine-tuning minus prompt-tuning gap shrinks with "
                          f"size ({task})",
                    verdict=gap_verdict(gaps), numbers=f"gap in points by size: {text}"))
  init = {r["method"]: r for r in aggregate(results["init"], "method")}
  rand = next(v for k, v in init.items() if "random_uniform" in k)
  for kind in ("sampled_vocab", "class_labels"):
    other = next(v for k, v in init.items() if kind in k)
    out.append(dict(claim=f"Lester 2021: {kind.replace('_', ' ')} init beats random "
                          f"({suite.init_task}, {suite.sizes[0]})",
                    verdict=_verdict(other["mean"] > rand["mean"]),
                    numbers=f"{pm(other)} vs random {pm(rand)}"))
  by_len = sorted(aggregate(results["length"], "length"), key=lambda r: r["length"])
  means = [r["mean"] for r in by_len]
  best = int(np.argmax(means))
  out.append(dict(claim=f"Lester 2021: longer prompts help, up to a point ({suite.length_task})",
                  verdict=_verdict(means[best] > means[0]),
                  numbers=", ".join(f"{r['length']}: {r['mean']:.1f}" for r in by_len)
                          + f"; best at {by_len[best]['length']}"))
  for r in results["ensemble"]:
    out.append(dict(claim=f"Lester 2021: an ensemble beats the average prompt ({r['task']}, "
                          f"{r['size']})",
                    verdict=_verdict(r["vote"] > r["single_mean"]),
                    numbers=f"vote {r['vote']:.1f} vs mean {r['single_mean']:.1f} +- "
                            f"{r['single_std']:.1f} (best single {r['single_best']:.1f})"))
  methods = {r["method"]: r for r in aggregate(results["methods"], "method")}
  attempt_row = next(v for k, v in methods.items() if k.startswith("ATTEMPT"))
  pt_row = methods[pt]
  out.append(dict(claim=f"Asai 2022: ATTEMPT with good source prompts beats prompt tuning from "
                        f"scratch at equal steps ({suite.methods_task}, {suite.sizes[0]})",
                  verdict=_verdict(attempt_row["mean"] > pt_row["mean"]),
                  numbers=f"{pm(attempt_row)} vs {pm(pt_row)}"))
  multi = {r["method"]: r for r in aggregate(results["multitask"], "method")}
  hp = next(v for k, v in multi.items() if k.startswith("HyperPrompt"))
  mtpt = next(v for k, v in multi.items() if k.startswith("multi-task prompt"))
  idpt = next(v for k, v in multi.items() if k.startswith("ID-PT"))
  static = multi[pt]
  out.append(dict(claim=f"He 2022: HyperPrompt beats multi-task prompt tuning at equal "
                        f"trainable parameters ({suite.multitask_task}, {suite.sizes[0]})",
                  verdict=_verdict(hp["mean"] > mtpt["mean"]),
                  numbers=f"{pm(hp)} ({hp['trainable_parameters']:,} parameters) vs "
                          f"{pm(mtpt)} ({mtpt['trainable_parameters']:,})"))
  out.append(dict(claim=f"Levine 2022: ID-PT beats one static prompt on the multi-task "
                        f"mixture ({suite.multitask_task}, {suite.sizes[0]})",
                  verdict=_verdict(idpt["mean"] > static["mean"]),
                  numbers=f"{pm(idpt)} vs {pm(static)}"))
  rec = results["recycling"]["summary"]
  best_method = max(rec, key=lambda m: rec[m]["success"])
  out.append(dict(claim="Lester 2022: prompts can be recycled (success = beating the target's "
                        "strongest zero-shot baseline; the paper's best setting: 88.9%)",
                  verdict=_verdict(rec[best_method]["success"] > 0),
                  numbers=", ".join(f"{m}: {v['success']:.1f}% of {v['recycled']}"
                                    for m, v in rec.items())))
  larger = [v["to_larger"] for v in rec.values()]
  smaller = [v["to_smaller"] for v in rec.values()]
  if not any(np.isnan(larger + smaller)):
    out.append(dict(claim="Lester 2022: recycling toward a larger target works better",
                    verdict=_verdict(np.mean(larger) > np.mean(smaller)),
                    numbers=", ".join(f"{m}: {v['to_larger']:.1f}% to larger vs "
                                      f"{v['to_smaller']:.1f}% to smaller"
                                      for m, v in rec.items())))
  return out

