"""The research suite's report: research.json, research.md and two PNG plots."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks import report as report_lib
from benchmarks.research.config import Suite, suite_of
from benchmarks.research.methods import FINETUNE, prompt_tuning
from benchmarks.research.stats import aggregate, pm


def _runs_note(results: dict[str, Any]) -> str:
  """How much of the run was done now: runs are cached, so a rerun may train few."""
  runs = results.get("runs")
  if not runs:
    return ""
  return (f" ({runs['trained']} runs trained now, {runs['cached']} found in the run cache; "
          f"the tables' runs took {runs['train_minutes']:.1f} min of training when they ran)")


def write(results: dict[str, Any], suite: Suite, out_dir: str) -> None:
  """research.json and research.md (`markdown`) in `out_dir`, and the plots."""
  report_lib.write("research", results, out_dir=out_dir)
  plot(results, suite, out_dir)


def markdown(results: dict[str, Any]) -> str:
  """research.md from research.json: the claims, then every experiment's table."""
  suite, info = suite_of(results), results["machine"]
  lines = ["# Research suite: the papers' claims on the synthetic family", "",
           f"Written by `python -m benchmarks.research{' --quick' if results['quick'] else ''}` "
           f"in {results['seconds'] / 60:.1f} min{_runs_note(results)} on "
           f"{machine.describe(info)} (AVX2: "
           f"{'yes' if info['avx2'] else 'no'}; load average at start "
           f"{info['load_average'][0]:.1f}). Raw figures: `research.json`. "
           f"Mean +- standard deviation over seeds {list(suite.seeds)}.", "",
           "## Claims", "", "| claim | verdict | numbers |", "| --- | --- | --- |"]
  for c in results["claims"]:
    lines.append(f"| {c['claim']} | {c['verdict']} | {c['numbers']} |")
  if results.get("inseparable"):
    lines += ["", "Figures that cannot separate methods (a full run refuses them; this quick "
              "run lists them):", ""] + [f"- {m}" for m in results["inseparable"]]
  lines += ["", "## Scale: prompt tuning vs full fine-tuning", "",
            "| task | size | method | score | trainable parameters |",
            "| --- | --- | --- | --- | --- |"]
  for r in aggregate(results["scale"], "task", "size", "method"):
    lines.append(f"| {r['task']} | {r['size']} | {r['method']} | {pm(r)} | "
                 f"{r['trainable_parameters']:,} |")
  lines += ["", "## Initialization", "", "| method | score |", "| --- | --- |"]
  for r in aggregate(results["init"], "method"):
    lines.append(f"| {r['method']} | {pm(r)} |")
  lines += ["", "## Prompt length", "", "| length | score | trainable parameters |",
            "| --- | --- | --- |"]
  for r in sorted(aggregate(results["length"], "length"), key=lambda r: r["length"]):
    lines.append(f"| {r['length']} | {pm(r)} | "
                 f"{r['trainable_parameters']:,} |")
  lines += ["", "## Ensembles (majority vote of the scale experiment's prompts)", "",
            "| task | size | vote | single prompts |", "| --- | --- | --- | --- |"]
  for r in results["ensemble"]:
    lines.append(f"| {r['task']} | {r['size']} | {r['vote']:.1f} | {r['single_mean']:.1f} +- "
                 f"{r['single_std']:.1f} |")
  lines += ["", f"## Every method on one held-out format ({suite.methods_task}, "
            f"{suite.sizes[0]}, {suite.steps} steps)", "",
            "Optimizers: prompts of input embeddings use the paper's Adafactor (constant 0.3); "
            "networks and per-layer vectors (deep prompts, prefix tuning, IA3, HyperPrompt, "
            "ID-PT) use Adam at 3e-3; full fine-tuning uses Adafactor at 1e-3. No method's "
            "learning rate was tuned on these tasks.", "",
            "| method | score | trainable parameters | train seconds |",
            "| --- | --- | --- | --- |"]
  seconds = {}
  for r in results["methods"] + results["multitask"]:
    seconds.setdefault(r["method"], []).append(r["train_seconds"])
  for r in sorted(aggregate(results["methods"], "method"), key=lambda r: -r["mean"]):
    lines.append(f"| {r['method']} | {pm(r)} | "
                 f"{r['trainable_parameters']:,} | {np.median(seconds[r['method']]):.0f} |")
  lines += ["", f"## Multi-task mixture ({suite.multitask_task}, {suite.sizes[0]}, "
            f"{suite.steps} steps)", "",
            "Mean exact match over the mixture's formats. Task-aware methods read each "
            "example's task index; ID-PT and the static prompt do not.", "",
            "| method | score | trainable parameters | train seconds |",
            "| --- | --- | --- | --- |"]
  for r in sorted(aggregate(results["multitask"], "method"), key=lambda r: -r["mean"]):
    lines.append(f"| {r['method']} | {pm(r)} | "
                 f"{r['trainable_parameters']:,} | {np.median(seconds[r['method']]):.0f} |")
  rec = results["recycling"]
  lines += ["", f"## Recycling ({rec['task']}, rank classification)", "",
            "Every ordered pair of backbones (sizes x pretraining seeds); prompts trained on "
            "the source with seeds " + f"{list(suite.recycle_prompt_seeds)}. A recycled "
            "prompt succeeds when it beats the strongest zero-shot baseline on the target. "
            "The paper (Lester et al. 2022) reports 88.9% for its best setting and finds "
            "recycling to a larger target more successful.", "",
            "| method | success rate | to a larger target | to a smaller target | "
            "mean recycled accuracy | recycled prompts |", "| --- | --- | --- | --- | --- | --- |"]
  for m, v in rec["summary"].items():
    lines.append(f"| {m} | {v['success']:.1f}% | {v['to_larger']:.1f}% | "
                 f"{v['to_smaller']:.1f}% | {v['mean_recycled']:.1f} | {v['recycled']} |")
  names = list(next(iter(rec["baselines"].values())))
  lines += ["", "Zero-shot baselines and trained source prompts per backbone:", "",
            "| backbone | " + " | ".join(names) + " | trained prompts |",
            "| --- " * (len(names) + 2) + "|"]
  for b, base in rec["baselines"].items():
    trained = [v for k, v in rec["sources"].items() if k.startswith(b + " ")]
    lines.append(f"| {b} | " + " | ".join(f"{base[n]:.1f}" for n in names)
                 + f" | {', '.join(f'{t:.1f}' for t in trained)} |")
  return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], suite: Suite, out_dir: str) -> None:
  """research_scale_and_length.png and research_recycling_and_methods.png in `out_dir`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter

  def save(fig, name: str) -> None:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  scale = aggregate(results["scale"], "task", "size", "method")
  backbone_params = results["backbone_parameters"]
  for task in suite.scale_tasks:
    for method in (prompt_tuning(suite).name, FINETUNE.name):
      pts = [(backbone_params[r["size"]], r["mean"], r["std"]) for r in scale
             if r["task"] == task and r["method"] == method]
      pts.sort()
      axes[0].errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                       marker="o", capsize=3, label=f"{method.split(' (')[0]}, {task}")
  axes[0].set_xscale("log")
  # One labelled tick per backbone size, none in between (they overlapped).
  sizes = sorted(backbone_params.items(), key=lambda kv: kv[1])
  axes[0].set_xticks([v for _, v in sizes], [f"{k}\n{v / 1e6:.2f}M" for k, v in sizes])
  axes[0].xaxis.set_minor_formatter(NullFormatter())
  axes[0].set(xlabel="backbone parameters", ylabel="score (%)", title="Scale")
  axes[0].legend(fontsize=7)
  by_len = sorted(aggregate(results["length"], "length"), key=lambda r: r["length"])
  axes[1].errorbar([r["length"] for r in by_len], [r["mean"] for r in by_len],
                   [r["std"] for r in by_len], marker="o", capsize=3)
  axes[1].set_xscale("log")
  axes[1].set(xlabel="prompt length (tokens)", ylabel="score (%)",
              title=f"Prompt length ({suite.length_task}, {suite.sizes[0]})")
  save(fig, "research_scale_and_length.png")
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  rec = results["recycling"]["summary"]
  names = list(rec)
  x = np.arange(len(names))
  for offset, key, label in ((-0.25, "success", "all pairs"), (0.0, "to_larger", "to larger"),
                             (0.25, "to_smaller", "to smaller")):
    axes[0].bar(x + offset, [rec[n][key] for n in names], 0.25, label=label)
  axes[0].axhline(88.9, color="k", ls="--", lw=1, label="paper's best setting (88.9%)")
  axes[0].set_xticks(x, names)
  axes[0].set(ylabel="success rate (%)", title="Recycling success per method", ylim=(0, 100))
  axes[0].legend(fontsize=7)
  for key, marker in (("methods", "o"), ("multitask", "s")):
    for r in aggregate(results[key], "method"):
      axes[1].errorbar(r["trainable_parameters"], r["mean"], r["std"], marker=marker,
                       capsize=3, ls="none")
      axes[1].annotate(r["method"].split(" (")[0], (r["trainable_parameters"], r["mean"]),
                       fontsize=6, xytext=(3, 3), textcoords="offset points")
  axes[1].set_xscale("log")
  axes[1].set(xlabel="trainable parameters", ylabel="score (%)",
              title=f"Methods (circles: {suite.methods_task}; squares: {suite.multitask_task})")
  save(fig, "research_recycling_and_methods.png")

