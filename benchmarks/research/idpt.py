"""ID-PT (Levine et al. 2022) against controls of equal budget on the miniature (issue 35).

    python -m benchmarks.research.idpt           # the full run: idpt_miniature.{json,md}
    python -m benchmarks.research.idpt --quick   # xs, a few steps, one seed: structure only

The paper's setting: one generalist prompt generator over a multi-task mixture
with no task markers. Here the mixture is the miniature's part of speech
(input: a definition) and etymology (input: a bare headword), equal rates
(`miniature_pos_etymology`); the inputs' form tells the tasks apart, so an
input-dependent prompt can, and one static prompt cannot. Every method:

  - ID-PT: `FrozenReadingPrompt`, queries over the frozen backbone's reading;
  - the same generator fed a zeroed reading (`zero_reading=True`): the same
    parameters, the input dependence removed;
  - a static prompt of 10 and of 100 tokens (sampled-vocabulary init);
  - multi-task prompt tuning (shared + per task, added) WITH the task index, on
    the marked twin of the mixture: a reference, not a control.

All train with the same optimizer (Adam) over the same learning-rate sweep
(`rates`), the same steps, batch and data order per seed; the sweep's seed
(the first) picks each method's rate on validation, the other seeds run at
it, and every score is on one shared held-out test set (the same examples in
the same order for every method). The claims are tested per example and
across seeds at once (`seed_example_bootstrap`), with the verdict words and
the chance gate of the research suite (`stats`, `experiments_family`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.research import experiments_family, stats
from benchmarks.research.config import Suite
from benchmarks.research.runs import Method, correct_vector, run

NAME = "idpt_miniature"
IDPT, ZEROED = "ID-PT (frozen reading)", "ID-PT, zeroed reading"
STATIC, MARKED = "static prompt", "multi-task prompt with task markers"
CHANCE = 25.0  # both tasks: 4 balanced labels


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one run of the experiment trains and scores.

  The full run is cut to fit the time there was, on two cores shared with
  other work (load average about 7): on l, ID-PT ran at 0.7 steps a second
  (its encoder runs twice), so 35 runs (5 methods x (3 rates + 4 more seeds))
  of 200 steps would take about three hours; on m one run of 150 steps took
  about a minute, a third of it compiling and scoring. Hence m and a
  two-point sweep (1e-3 was dropped after ID-PT's run at it stayed at
  chance, 26.6%, and a prompt of input embeddings moves too little at it);
  at 150 steps every method's sweep runs stayed near chance (22.8-30.4%), so
  the run takes 300.
  """
  size: str = "m"
  steps: int = 300
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  rates: tuple[float, ...] = (1e-2, 1e-1)
  batch_size: int = 32
  evaluations: int = 2
  eval_examples: int = 128     # validation, half per task
  test_examples: int = 372     # the shared test set, half per task
  prompt_length: int = 10      # ID-PT's, the zeroed one's, the marked prompt's
  long_length: int = 100       # the longer static prompt
  generator: tuple[tuple[str, int], ...] = (("width", 64), ("num_layers", 2),
                                            ("num_heads", 4), ("mlp_dim", 128))

  def suite(self) -> Suite:
    return Suite(seeds=self.seeds, steps=self.steps, batch_size=self.batch_size,
                 evaluations=self.evaluations, eval_examples=self.eval_examples,
                 test_examples=self.test_examples)


FULL = Settings()
QUICK = Settings(size="xs", steps=4, seeds=(0,), rates=(1e-2,), evaluations=1, eval_examples=8,
                 test_examples=16, long_length=20)


def methods(settings: Settings, frequent_ids) -> list[tuple[Method, str]]:
  """(method, its task) for each method compared; all train with Adam."""
  from prompt_tuning.prompts import input_dependent, multi_task
  from prompt_tuning.tasks import miniature as tasks_lib
  from benchmarks.research.methods import family_prompt, sampled_top
  p, gen = settings.prompt_length, dict(settings.generator)
  unmarked = f"miniature_{tasks_lib.MIXTURE}"

  def generator(zero: bool) -> Method:
    return Method(ZEROED if zero else IDPT, lambda path, seed: input_dependent.FrozenReadingPrompt(
        p, zero_reading=zero, **gen), optimizer="adam",
                  model_class=input_dependent.InputDependentT5, settings=(f"{gen}",))

  def static(length: int) -> Method:
    m = family_prompt(length, "sampled_vocab", frequent_ids, 5000)
    return dataclasses.replace(m, name=f"{STATIC} ({length} tokens)", optimizer="adam")
  marked = Method(f"{MARKED} ({p} tokens)", lambda path, seed: multi_task.MultiTaskPrompt(
      p, len(tasks_lib.MIXTURE_TASKS), mode="add",
      init=sampled_top(path, np.asarray(frequent_ids())[:5000], seed)), optimizer="adam")
  return [(generator(False), unmarked), (generator(True), unmarked),
          (static(p), unmarked), (static(settings.long_length), unmarked),
          (marked, unmarked + "_marked")]


def class_labels() -> dict[str, tuple[str, ...]]:
  from prompt_tuning.tasks import gcide
  from prompt_tuning.tasks import miniature as tasks_lib
  out = {}
  for t in tasks_lib.MIXTURE_TASKS:
    out[f"miniature_{t}"] = out[f"miniature_task_index_{t}"] = tuple(gcide.LABELS[t])
  return out


def _one(method: Method, task: str, bb, seed: int, settings: Settings, work_dir: str,
         labels: Optional[dict[str, tuple[str, ...]]] = None):
  """One run (`labels`: the rank classifier's, by task; None: this mixture's); a run whose
  loss went non-finite (a rate too high) is a row saying so."""
  from prompt_tuning.tasks import miniature as tasks_lib
  from prompt_tuning.train.loop import NonFiniteLossError
  try:
    return run(method, task, bb, seed, settings.suite(), work_dir,
               feature_lengths=dict(tasks_lib.FEATURE_LENGTHS),
               class_labels=class_labels() if labels is None else labels)
  except NonFiniteLossError as e:
    return dict(method=method.name, seed=seed, learning_rate=method.learning_rate,
                failed=str(e).split(";")[0], validation_score=-math.inf)


def pick_rate(sweep: Sequence[dict[str, Any]], task: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """A sweep's best run by validation score (the lower rate on a tie), and the sweep's
  record: its task, each rate's validation score, the rate selected."""
  best = max(sweep, key=lambda r: (r["validation_score"], -r["learning_rate"]))
  return best, dict(task=task, validation={
      f"{r['learning_rate']:g}": r["validation_score"] for r in sweep},
                    selected=best["learning_rate"])


def run_all(settings: Settings, work_dir: str, save=lambda result: None,
            log=print) -> dict[str, Any]:
  """Every method's sweep, then the other seeds (each seed of every method before the
  next seed); `save(partial result)` after each run."""
  from benchmarks.research import family as family_lib
  from prompt_tuning import miniature
  from prompt_tuning.miniature import family as mini
  corpus = miniature.corpus()
  path = mini.require(settings.size, mini.PretrainConfig())
  bb = family_lib.Backbone(settings.size, path, mini.backbone_config(settings.size),
                           corpus.vocabulary(), 0)
  frequent = lambda: corpus.frequent_ids(10 ** 9)  # noqa: E731
  plan = methods(settings, frequent)
  out: dict[str, Any] = dict(settings=dataclasses.asdict(settings), backbone=path,
                             sweeps={}, rows=[], partial=True)
  start = time.time()
  for method, task in plan:  # the sweeps first: each method's rate, on the first seed
    best, out["sweeps"][method.name] = pick_rate(
        [_one(method.with_rate(r), task, bb, settings.seeds[0], settings, work_dir)
         for r in settings.rates], task)
    out["rows"].append(_row(best))
    log(f"{method.name}: rate {best['learning_rate']:g} ({time.time() - start:.0f} s)")
    save(out)
  for seed in settings.seeds[1:]:  # seed by seed, so that a cut run stays balanced
    for method, task in plan:
      rate = out["sweeps"][method.name]["selected"]
      out["rows"].append(_row(_one(method.with_rate(rate), task, bb, seed, settings, work_dir)))
      log(f"{method.name} seed {seed}: {out['rows'][-1].get('score')} "
          f"({time.time() - start:.0f} s)")
      save(out)
  out["partial"] = False
  out["seconds"] = time.time() - start
  return out


def _row(r: dict[str, Any]) -> dict[str, Any]:
  keep = ("method", "task", "seed", "learning_rate", "score", "validation_score", "test_correct",
          "trainable_parameters", "steps_per_sec", "selected_step", "failed")
  return {k: r[k] for k in keep if k in r}


def seed_example_bootstrap(a_SN: np.ndarray, b_SN: np.ndarray, resamples: int = 10000,
                           seed: int = 0) -> dict[str, Any]:
  """mean(a) - mean(b) in points, resampling each side's seeds and the shared examples
  (paired: the same examples for both) at once, so that the interval carries both
  the seed-to-seed and the example-to-example spread; two-sided p as twice the
  share of resampled differences on the far side of 0."""
  a, b = np.asarray(a_SN, np.float64), np.asarray(b_SN, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not a.size or not b.size:
    raise ValueError(f"need [seeds, examples] matrices over one example set: {a.shape}, "
                     f"{b.shape}")
  rng = np.random.RandomState(seed)
  n = a.shape[1]

  def weights(count: int, width: int) -> np.ndarray:
    picks = rng.randint(0, width, size=(resamples, count))
    return np.stack([np.bincount(row, minlength=width) for row in picks]) / count
  per_example = weights(a.shape[0], a.shape[0]) @ a - weights(b.shape[0], b.shape[0]) @ b
  diffs = 100.0 * np.sum(per_example * weights(n, n), axis=1)
  p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
  lo, hi = np.percentile(diffs, [2.5, 97.5])
  return dict(test=f"bootstrap over seeds and shared examples ({a.shape[0]} vs {b.shape[0]} "
                   f"seeds, {n} examples, {resamples} resamples)",
              p=float(p), effect=float(100.0 * (a.mean() - b.mean())),
              ci=(float(lo), float(hi)), n=(a.shape[0], b.shape[0], n))


def _matrix(rows) -> np.ndarray:
  return np.stack([correct_vector(r["test_correct"]) for r in rows]).astype(np.float64)


def _learned(r) -> bool:
  return experiments_family.learned(r, CHANCE)


def claims(result: dict[str, Any]) -> list[dict[str, Any]]:
  """ID-PT against each control (and the marked reference), per example and seed."""
  by = {}
  for r in result["rows"]:
    if "failed" not in r:
      by.setdefault(r["method"], []).append(r)
  idpt = by.get(IDPT, [])
  out = []
  for name, rows in by.items():
    if name == IDPT:
      continue
    if name.startswith(ZEROED):
      claim = "Levine 2022: ID-PT's gain comes from reading the input"
      control = "the same generator, equal parameters, fed a zeroed reading"
    elif name.startswith(STATIC):
      claim = f"Levine 2022: ID-PT beats a {name} at the same optimizer and rate sweep"
      control = name
    else:
      claim = "Reference: ID-PT without task markers beats multi-task prompt tuning with them"
      control = name + " (reference, not a control)"
    claim += " (miniature pos + etymology, no task markers)"
    numbers = (f"{_mean_sd(idpt)} vs {_mean_sd(rows)} ({len(idpt)} vs {len(rows)} seeds, "
               "test split)")
    out.append(tested(claim, control, idpt, rows, numbers) if idpt else
               stats.untestable(claim, control, "ID-PT has no finished run", numbers))
  return out


def tested(claim: str, control: str, rows, control_rows, numbers: str,
           chance: float = CHANCE) -> dict[str, Any]:
  """A claim that `rows` beat `control_rows` (finished runs, on one shared test set):
  "not testable here" where no run on either side beats `chance` (%), else the seed and
  example bootstrap (and, where both sides have several seeds, a permutation test
  across seeds alone, in the numbers)."""
  if not any(experiments_family.learned(r, chance) for r in [*rows, *control_rows]):
    return stats.untestable(claim, control, experiments_family.none_learned(chance), numbers)
  if len(rows) > 1 and len(control_rows) > 1:
    perm = stats.permutation_test([r["score"] for r in rows], [r["score"] for r in control_rows])
    numbers += f"; across seeds alone: permutation p = {perm['p']:.3g}"
  return stats.claim(claim, control, seed_example_bootstrap(_matrix(rows), _matrix(control_rows)),
                     numbers=numbers)


def _mean_sd(rows) -> str:
  s = [r["score"] for r in rows]
  if not s:
    return "-"
  return f"{np.mean(s):.1f} +- {np.std(s, ddof=1) if len(s) > 1 else 0.0:.1f}"


def cost_against(rows, base_rows) -> dict[str, Any]:
  """A method's trainable parameters, and those and its step time relative to
  prompt tuning's `base_rows` (None where prompt tuning has no run or no rate).
  Step rates are medians over runs: one run's rate swings with the machine's load."""
  sps = [r["steps_per_sec"] for r in rows if r.get("steps_per_sec")]
  base_sps = [r["steps_per_sec"] for r in base_rows if r.get("steps_per_sec")]
  params = rows[0]["trainable_parameters"]
  return dict(parameters=params,
              parameters_x=params / base_rows[0]["trainable_parameters"] if base_rows else None,
              step_time_x=float(np.median(base_sps)) / float(np.median(sps))
              if base_sps and sps else None)


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
  """Per method: rate, scores, per-task means, parameters and cost against prompt tuning."""
  out = []
  base_name = f"{STATIC} ({result['settings']['prompt_length']} tokens)"
  base_rows = [r for r in result["rows"] if r["method"] == base_name and "failed" not in r]
  for name, sweep in result["sweeps"].items():
    rows = [r for r in result["rows"] if r["method"] == name and "failed" not in r]
    if not rows:
      out.append(dict(method=name, rate=sweep["selected"], seeds=0))
      continue
    m = _matrix(rows)
    half = m.shape[1] // 2
    out.append(dict(
        method=name, rate=sweep["selected"], seeds=len(rows), score=_mean_sd(rows),
        pos=100.0 * m[:, :half].mean(), etymology=100.0 * m[:, half:].mean(),
        above_chance=sum(_learned(r) for r in rows), **cost_against(rows, base_rows)))
  return out


def claims_section(result: dict[str, Any], chance: float = CHANCE) -> list[str]:
  """The report's lines from the run's state and the verdicts' legend to the claims
  table (this experiment's, recursion's and transfer's; `chance` in %)."""
  status = ("**PARTIAL: the run stopped before every seed finished; the rows below are "
            "those that did.**\n\n" if result.get("partial") else "")
  lines = [
      status + "Verdicts as in research_miniature.md: \"reproduced (p < 0.05)\", "
      "\"contradicted (p < 0.05)\", \"inconclusive\", or \"not testable here\" with the "
      f"reason (no run on either side beats chance, {chance:g}%). Test: a bootstrap that "
      "resamples each side's seeds and the shared examples together (paired per example), "
      "95% percentile interval.",
      "", "## Claims", "", "| claim | control | effect [95% interval], p | verdict | numbers |",
      "| --- | --- | --- | --- | --- |"]
  for c in result["claims"]:
    lines.append(f"| {c['claim']} | {c['control']} | {stats.effect_text(c)} | {c['verdict']} "
                 f"| {c['numbers']} |")
  return lines


def markdown(result: dict[str, Any]) -> str:
  s = result["settings"]
  lines = [
      "# ID-PT against controls of equal budget (Levine et al. 2022, issue 35)", "",
      f"Written by `python -m benchmarks.research.idpt{' --quick' if s['size'] == 'xs' else ''}` "
      f"on {result.get('machine_text', 'an unrecorded machine')}. Backbone: miniature "
      f"{s['size']} (frozen). Mixture: part of speech + etymology at equal rates, no task "
      f"markers (the marked reference reads a task index). {s['steps']} steps, batch "
      f"{s['batch_size']}, Adam for every method, rates {s['rates']} swept on seed "
      f"{s['seeds'][0]} and selected on validation ({s['eval_examples']} examples); seeds "
      f"{s['seeds']}; scores: rank-classification accuracy (%) on one shared test set of "
      f"{s['test_examples']} examples (half per task), mean +- sd over seeds.", "",
      *claims_section(result)]
  lines += ["", "## Methods", "", "| method | rate | test score | pos | etymology | runs above "
            "chance | trainable parameters | x prompt tuning | step time x prompt tuning |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
  for m in result["methods"]:
    if not m["seeds"]:
      lines.append(f"| {m['method']} | {m['rate']:g} | no finished run | | | | | | |")
      continue
    lines.append(f"| {m['method']} | {m['rate']:g} | {m['score']} | {m['pos']:.1f} | "
                 f"{m['etymology']:.1f} | {m['above_chance']} of {m['seeds']} | "
                 f"{m['parameters']:,} | {fmt(m['parameters_x'], '.1f')} | "
                 f"{fmt(m['step_time_x'], '.2f')} |")
  lines += ["", "Validation score of each rate (the sweep's seed):", "",
            "| method | " + " | ".join(f"{r:g}" for r in s["rates"]) + " | selected |",
            "| --- |" + " --- |" * (len(s["rates"]) + 1)]
  for name, sw in result["sweeps"].items():
    vals = [sw["validation"].get(f"{r:g}") for r in s["rates"]]
    lines.append(f"| {name} | " + " | ".join(
        "non-finite" if v is None or v == -math.inf else f"{v:.1f}" for v in vals)
        + f" | {sw['selected']:g} |")
  lines += ["", "Step time: the median over a method's runs of the step rate in its last "
            "logging window (compilation excluded), relative to the same median of the "
            f"{s['prompt_length']}-token static prompt (prompt tuning); the machine's two "
            "cores were shared with other work, so read it to about +-20%.", ""]
  return "\n".join(lines)


def by_method(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
  """A result's finished rows, by method name."""
  by: dict[str, list] = {}
  for r in result["rows"]:
    if "failed" not in r:
      by.setdefault(r["method"], []).append(r)
  return by


def named(by, prefix: str) -> tuple[str, list]:
  """The method whose name is `prefix` or starts with it and a parenthesis, with its rows."""
  names = [n for n in by if n == prefix or n.startswith(prefix + " (")]
  return (names[0], by[names[0]]) if names else (prefix, [])


def claims_of_pairs(result: dict[str, Any], pairs, where: str,
                    chance: float) -> list[dict[str, Any]]:
  """Each (better, control, claim) of `pairs`, tested per example and seed on the shared
  test set; `where` says on what, after the claim."""
  by, out = by_method(result), []
  for better, control, claim in pairs:
    (_, rows), (control_name, control_rows) = named(by, better), named(by, control)
    claim += where
    numbers = (f"{_mean_sd(rows)} vs {_mean_sd(control_rows)} "
               f"({len(rows)} vs {len(control_rows)} seeds, test split)")
    out.append(tested(claim, control_name, rows, control_rows, numbers, chance)
               if rows and control_rows else
               stats.untestable(claim, control_name, "a side has no finished run", numbers))
  return out


def finished(result: dict[str, Any], claims_of, summary_of) -> dict[str, Any]:
  """`result` with the machine, its claims and its methods' summary: the last step
  of each miniature experiment (this one, recursion, transfer)."""
  from benchmarks import machine
  info = machine.cpu_info()
  result.update(machine=info, machine_text=machine.describe(info), claims=claims_of(result),
                methods=summary_of(result))
  return result


def finish(result: dict[str, Any]) -> dict[str, Any]:
  result.pop("summary", None)  # the name this table had before; report.py reads "summary"
  return finished(result, claims, summary)


def experiment_main(argv: Optional[Sequence[str]], module: str, description: str, name: str,
                    full, quick, run_all_fn, finish_fn) -> dict[str, Any]:
  """The command line an experiment of `Settings` presets shares (this one, recursion):
  --quick, --size, --steps, --out, --work_dir and --report_only; runs `run_all_fn`,
  writes NAME.{json,md} (after every run too) and prints each claim's verdict."""
  parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
  parser.add_argument("--quick", action="store_true", help="xs, a few steps, one seed")
  parser.add_argument("--size", default=None, help=f"the miniature size (default: {full.size}; "
                      f"quick: {quick.size})")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--out", default=None, help="default: benchmarks/results/<machine>/ "
                      "(a temporary folder with --quick)")
  parser.add_argument("--work_dir", default=None, help="run folders (cached between runs)")
  parser.add_argument("--report_only", action="store_true", help="run nothing: recompute the "
                      "claims and the table of the results JSON in --out, and rewrite them")
  args = parser.parse_args(argv)
  from benchmarks import machine, report
  from prompt_tuning.cli import environment
  environment.configure()
  settings = quick if args.quick else full
  settings = dataclasses.replace(settings, **{k: v for k, v in dict(
      size=args.size, steps=args.steps).items() if v is not None})
  short = name.split("_")[0]
  out = args.out or (tempfile.mkdtemp(prefix=f"{short}_quick_") if args.quick
                     else machine.results_dir())
  name += "_quick" if args.quick else ""
  work_dir = args.work_dir or os.path.join(environment.project_cache_dir(),
                                           f"{short}_quick" if args.quick else short)
  save = lambda result: report.write(name, finish_fn(dict(result)), out_dir=out)  # noqa: E731
  if args.report_only:
    with open(os.path.join(out, name + ".json")) as f:
      result = json.load(f)
    ran_on = {k: result[k] for k in ("machine", "machine_text") if k in result}
    result = {**finish_fn(result), **ran_on}  # where it ran, not where it was rewritten
  else:
    result = finish_fn(run_all_fn(settings, work_dir, save=save))
  report.write(name, result, out_dir=out)
  for c in result["claims"]:
    print(f"{c['verdict'][:24]:>24}  {c['claim']}: {stats.effect_text(c)}; {c['numbers']}")
  print(f"wrote {os.path.join(out, name + '.md')}", file=sys.stderr)
  return result


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  return experiment_main(argv, "benchmarks.research.idpt", __doc__.split("\n\n")[0], NAME, FULL,
                         QUICK, run_all, finish)


if __name__ == "__main__":
  main()
