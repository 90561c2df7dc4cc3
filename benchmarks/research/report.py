"""The research suite's report: research.json, research.md and its plots."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks import report as report_lib
from benchmarks.research.config import Suite, suite_of
from benchmarks.research.stats import aggregate, effect_text, pm  # noqa: F401  (cli prints effect_text)

RULES = ("Verdicts: \"reproduced (p < 0.05)\" when the effect goes the paper's way and its "
         "test rejects no effect at 0.05; \"contradicted (p < 0.05)\" when it goes the other "
         "way as significantly; otherwise \"inconclusive\"; \"not testable here\" with the "
         "reason. Across seeds: an exact permutation test of the difference in means, with the "
         "95% interval that inverts it (the shifts the test does not reject, so it leaves out "
         "0 exactly when p < 0.05); on one shared test set: McNemar's exact test (accuracies) "
         "or a paired bootstrap over examples (continuous scores). A comparison of prompts "
         "none of which beats chance on the test split (one-sided exact binomial, p < 0.05) "
         "is \"not testable here\": those prompts learned nothing to compare. Every run "
         "selects its checkpoint (and, in the family experiments, its learning rate) on the "
         "validation split; every score is on the held-out test split.")


def _runs_note(results: dict[str, Any]) -> str:
  """How much of the run was done now: runs are cached, so a rerun may train few."""
  runs = results.get("runs")
  if not runs:
    return ""
  parts = [f"{runs['trained']} runs trained now, {runs['cached']} found in the run cache"]
  if results.get("cpu_seconds") is not None:
    parts.append(f"{results['cpu_seconds'] / 60:.1f} min of CPU (user + system)")
  if runs.get("train_minutes"):
    parts.append(f"the byte tables' runs took {runs['train_minutes']:.1f} min of training "
                 f"when they ran")
  if runs.get("family_train_minutes"):
    parts.append(f"the family's size, initialization and length runs took "
                 f"{runs['family_train_minutes']:.1f} min of training when they ran")
  return f" ({'; '.join(parts)})"


def report_name(preset: str) -> str:
  """The report's file name: research, or research_<preset> for a named preset."""
  return "research" if preset in ("quick", "full") else f"research_{preset}"


def _preset(results: dict[str, Any]) -> str:
  """The preset a results file was made with (files from before presets: quick or full)."""
  return results.get("preset") or ("quick" if results["quick"] else "full")


def _name(results: dict[str, Any]) -> str:
  return report_name(_preset(results))


def _flags(results: dict[str, Any]) -> str:
  preset = _preset(results)
  return {"quick": " --quick", "full": ""}.get(preset, f" --suite {preset}")


def write(results: dict[str, Any], suite: Suite, out_dir: str, name: str = "research") -> None:
  """NAME.json and NAME.md (`markdown`) in `out_dir`, and the plots (research, or
  research_miniature for the miniature preset)."""
  report_lib.write(name, results, out_dir=out_dir)
  plot(results, suite, out_dir, name)


def claims_table(claims: list[dict[str, Any]]) -> list[str]:
  lines = ["| claim | control | effect [95% interval], p | verdict | test | numbers |",
           "| --- | --- | --- | --- | --- | --- |"]
  for c in claims:
    lines.append(f"| {c['claim']} | {c['control']} | {effect_text(c)} | {c['verdict']} | "
                 f"{c.get('test') or '-'} | {c['numbers']} |")
  return lines


def _method_table(rows, title: str) -> list[str]:
  seconds: dict[str, list[float]] = {}
  for r in rows:
    seconds.setdefault(r["method"], []).append(r["train_seconds"])
  lines = ["", title, "", "| method | test score | trainable parameters | train seconds |",
           "| --- | --- | --- | --- |"]
  for r in sorted(aggregate(rows, "method"), key=lambda r: -r["mean"]):
    lines.append(f"| {r['method']} | {pm(r)} | {r['trainable_parameters']:,} | "
                 f"{np.median(seconds[r['method']]):.0f} |")
  return lines


def markdown(results: dict[str, Any]) -> str:
  """research.md from research.json: the claims, then every experiment's table."""
  suite, info = suite_of(results), results["machine"]
  lines = ["# Research suite: the papers' claims, tested against controls", "",
           f"Written by `python -m benchmarks.research{_flags(results)}` "
           f"in {results['seconds'] / 60:.1f} min{_runs_note(results)} on "
           f"{machine.describe(info)} (AVX2: {'yes' if info['avx2'] else 'no'}; load average "
           f"at start {info['load_average'][0]:.1f}). Raw figures: `{_name(results)}.json`. Seeds "
           f"{list(suite.seeds)}; scores are mean +- sd over seeds on the test split.", "",
           RULES, "", "## Claims", ""] + claims_table(results["claims"])
  if results.get("inseparable"):
    lines += ["", "Figures that cannot separate methods (a full run refuses them; this quick "
              "run lists them):", ""] + [f"- {m}" for m in results["inseparable"]]
  size = suite.sizes[0]
  if results.get("length"):
    lines += ["", f"## Prompt length ({suite.length_task}, byte {size})", "",
              "| length | test score | selected steps | trainable parameters |",
              "| --- | --- | --- | --- |"]
    for r in sorted(aggregate(results["length"], "length"), key=lambda r: r["length"]):
      steps = [x["selected_step"] for x in results["length"] if x["length"] == r["length"]]
      lines.append(f"| {r['length']} | {pm(r)} | {steps} | {r['trainable_parameters']:,} |")
  for r in results.get("ensemble", ()):
    lines += ["", f"## Ensemble ({r['task']}, byte {r['size']}, {r['members']} prompts)", "",
              f"Majority vote {r['vote']:.1f}; the prompt that validation selects (seed "
              f"{r['selected_seed']}) {r['selected_score']:.1f}; members {r['single_mean']:.1f} "
              f"+- {r['single_std']:.1f} (best on test, chosen after the fact: "
              f"{r['single_best_on_test']:.1f})."]
  if results.get("methods"):
    lines += _method_table(results["methods"], f"## Methods ({suite.methods_task}, byte {size}, "
                           f"{suite.steps} steps)")
  if results.get("multitask"):
    lines += _method_table(results["multitask"], f"## Multi-task mixture "
                           f"({suite.multitask_task}, byte {size}, {suite.steps} steps)")
  if results.get("family"):
    lines += family_markdown(results["family"])
  return "\n".join(lines) + "\n"


def family_markdown(fam: dict[str, Any]) -> list[str]:
  lines = ["", f"## The {fam['name']} family: Lester et al. 2021 and 2022 ({fam['task']})", "",
           "| backbone | parameters | quality |", "| --- | --- | --- |"]
  for b in fam["backbones"]:
    quality = ", ".join(f"{k} {v:.3g}" for k, v in (b["quality"] or {}).items()) or "not recorded"
    lines.append(f"| {b['size']} seed {b['seed']} | {b['parameters']:,} | {quality} |")
  lines += ["", "Learning rates selected on validation (the sweep's seed):", "",
            "| size | method | rates | selected |", "| --- | --- | --- | --- |"]
  for s in fam["sweeps"]:
    lines.append(f"| {s['size']} | {s['method']} | {s['rates']} | {s['selected']:g} |")
  from benchmarks.research.experiments_family import learned as learned_run, rows_of
  chance = fam.get("chance")

  def learned(rows, group, *keys) -> str:
    """How many runs of a group (the rows matching `group` on `keys`) beat chance: the
    claims' test of having learned."""
    runs = rows_of(rows, **{k: group[k] for k in keys})
    if chance is None or not all("test_correct" in r for r in runs):
      return "-"
    return f"{sum(learned_run(r, chance) for r in runs)} of {len(runs)}"

  above = (f"runs above chance ({chance:.0f}%)" if chance is not None else "runs above chance")
  lines += ["", f"| size | method | test score | {above} |", "| --- | --- | --- | --- |"]
  for r in aggregate(fam["scale"], "size", "method"):
    lines.append(f"| {r['size']} | {r['method']} | {pm(r)} | "
                 f"{learned(fam['scale'], r, 'size', 'method')} |")
  lines += ["", f"| initialization / length | test score | {above} |", "| --- | --- | --- |"]
  for r in aggregate(fam["init"], "init"):
    lines.append(f"| {r['init']} | {pm(r)} | {learned(fam['init'], r, 'init')} |")
  for r in sorted(aggregate(fam["length"], "length"), key=lambda r: r["length"]):
    lines.append(f"| {r['length']} tokens | {pm(r)} | "
                 f"{learned(fam['length'], r, 'length')} |")
  rec = fam["recycling"]
  lines += ["", f"Recycling ({rec['task']}; support: skip the {rec['support']['skip']} most "
            f"frequent pieces, take {rec['support']['take']}; random answers would succeed "
            f"{rec['random_answer_success']:.1f}% of the time). Each source prompt's own test "
            "score against its backbone's strongest zero-shot baseline; the claims count the "
            "cases whose source prompt beats it (one-sided exact binomial, p < 0.05):", "",
            "| source prompt | its test score | its backbone's strongest zero-shot baseline |",
            "| --- | --- | --- |"]
  for label, score in sorted(rec.get("sources", {}).items()):
    backbone = label.split(" seed ")[0]
    lines.append(f"| {label} | {score:.1f} | "
                 f"{max(rec['baselines'].get(backbone, {0: float('nan')}).values()):.1f} |")
  lines += ["", "| recycler | success | untrained prompt | random orthogonal map | "
            "mean accuracy | cases |", "| --- | --- | --- | --- | --- | --- |"]
  for m in sorted({r["method"] for r in rec["rows"]}):
    rows = [r for r in rec["rows"] if r["method"] == m]
    rate = lambda k: 100.0 * np.mean([r[k] for r in rows])  # noqa: E731
    lines.append(f"| {m} | {rate('success'):.1f}% | {rate('untrained_success'):.1f}% | "
                 f"{rate('orthogonal_success'):.1f}% | "
                 f"{np.mean([r['recycled'] for r in rows]):.1f} | {len(rows)} (every case) |")
  return lines


def plot(results: dict[str, Any], suite: Suite, out_dir: str, name: str = "research") -> None:
  """NAME_length_and_methods.png in `out_dir`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = results.get("length") or (results.get("family") or {}).get("length") or []
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  by_len = sorted(aggregate(rows, "length"), key=lambda r: r["length"]) if rows else []
  axes[0].errorbar([r["length"] for r in by_len], [r["mean"] for r in by_len],
                   [r["std"] for r in by_len], marker="o", capsize=3)
  axes[0].set_xscale("log")
  axes[0].set(xlabel="prompt length (tokens)", ylabel="test score (%)", title="Prompt length")
  for key, marker in (("methods", "o"), ("multitask", "s")):
    for r in aggregate(results.get(key) or [], "method"):
      axes[1].errorbar(r["trainable_parameters"], r["mean"], r["std"], marker=marker,
                       capsize=3, ls="none")
      axes[1].annotate(r["method"].split(" (")[0], (r["trainable_parameters"], r["mean"]),
                       fontsize=6, xytext=(3, 3), textcoords="offset points")
  axes[1].set_xscale("log")
  axes[1].set(xlabel="trainable parameters", ylabel="test score (%)",
              title=f"Methods (circles: {suite.methods_task}; squares: {suite.multitask_task})")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, f"{name}_length_and_methods.png"), dpi=110)
  plt.close(fig)
