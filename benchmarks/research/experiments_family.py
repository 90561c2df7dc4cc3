"""Lester et al. 2021 and 2022 on a backbone family (`family.Family`): the size axis
with learning rates swept on validation, initialization, prompt length,
ensembles, and recycling with its chance controls; and their claims.

Every run is selected on the validation split and scored on the test split
(`runs.run`). The learning rate of each method at each size is the best of
`suite.prompt_rates` / `suite.finetune_rates` by mean validation score of
the sweep's seed (the first seed), as the paper tunes on the development
set; the other seeds then run at the selected rate.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from benchmarks.research import stats
from benchmarks.research.config import Suite
from benchmarks.research.family import Backbone, Family
from benchmarks.research.methods import FINETUNE, family_prompt
from benchmarks.research.runs import (Method, correct_vector, count_parameters, run,
                                      score_detail)

INITS = ("random_uniform", "sampled_vocab", "class_labels")
# Lester et al. 2022, Table 2: the best setting's success rate.
PAPER_RECYCLING_SUCCESS = 88.9


def _parameters(bb: Backbone) -> int:
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  return count_parameters(params_lib.abstract_params(T5(bb.config))[0])


class _Runner:
  """The family's runs on its classification task, with the family's labels and lengths."""

  def __init__(self, family: Family, suite: Suite, work_dir: str, progress):
    self.family, self.suite, self.work_dir, self.progress = family, suite, work_dir, progress
    self.task = family.tasks.classification
    self.labels = family.tasks.class_labels

  def prompt(self, init: str = "sampled_vocab", length: int = 0, rate=None,
             task: str = "") -> Method:
    """Prompt tuning; class-label init reads the labels of `task` (default: the
    classification task)."""
    labels = self.labels.get(task or self.task) if init == "class_labels" else None
    return family_prompt(length or self.suite.family_prompt_length, init,
                         self.family.frequent_ids, self.suite.sampled_top, labels,
                         self.family.backbones[0].vocabulary, rate)

  def __call__(self, method: Method, bb: Backbone, seed: int, task: str = "") -> dict[str, Any]:
    r = run(method, task or self.task, bb, seed, self.suite, self.work_dir,
            feature_lengths=self.family.tasks.feature_lengths, class_labels=self.labels)
    self.progress()
    return r

  def swept(self, method: Method, rates: Sequence[float], bb: Backbone) -> tuple[float, list]:
    """(the rate the sweep's seed selects on validation, every seed's run at that rate)."""
    seeds = self.suite.seeds
    sweep = {rate: self(method.with_rate(rate), bb, seeds[0]) for rate in rates}
    best = max(rates, key=lambda r: (sweep[r]["validation_score"], -r))
    return best, [sweep[best]] + [self(method.with_rate(best), bb, s) for s in seeds[1:]]


def run_family(family: Family, suite: Suite, work_dir: str, progress) -> dict[str, Any]:
  """Every family experiment's rows (`claims` reads them)."""
  go = _Runner(family, suite, work_dir, progress)
  sizes = family.sizes()
  out: dict[str, Any] = dict(
      name=family.name, task=go.task, binary=family.tasks.binary,
      backbones=[dict(size=b.name, seed=b.seed, parameters=_parameters(b), quality=b.quality,
                      path=b.path) for b in family.backbones],
      untestable=dict(family.untestable), sweeps=[], scale=[], init=[], length=[],
      ensemble=[], chance=chance_of(go.labels, go.task))
  rate_of = {}
  for size in sizes:
    bb = family.of(size)
    for method, rates in ((go.prompt(), suite.prompt_rates), (FINETUNE, suite.finetune_rates)):
      rate, rows = go.swept(method, rates, bb)
      rate_of[(size, method.rules)] = rate
      out["sweeps"].append(dict(size=size, method=method.name, rates=list(rates), selected=rate))
      out["scale"] += [{**r, "family_method": method.rules} for r in rows]
  # Initialization and length on one size (the smallest unless the suite names
  # another: the smallest may be too weak a model for a prompt to move it).
  small = family.of(suite.family_claims_size or sizes[0])
  pt_rate = rate_of[(small.name, "prompt")]
  for init in INITS:
    for seed in suite.seeds:
      out["init"].append({**go(go.prompt(init, rate=pt_rate), small, seed), "init": init})
  for length in suite.family_lengths:
    for seed in suite.seeds:
      out["length"].append({**go(go.prompt(length=length, rate=pt_rate), small, seed),
                            "length": length})
  from benchmarks.research.experiments import ensemble_row
  for size in sizes:
    members = [r for r in out["scale"] if r["size"] == size and r["family_method"] == "prompt"
               ][:suite.ensemble_size]
    out["ensemble"].append(ensemble_row(members, family.of(size), go.task, suite,
                                        family.tasks.feature_lengths, go.labels))
  out["recycling"] = recycling(family, suite, go, rate_of)
  return out


def _orthogonal(source_width: int, target_width: int, seed: int) -> np.ndarray:
  """A random [Hs, Ht] map with orthonormal rows (or columns): the chance map."""
  rng = np.random.RandomState(seed)
  q, _ = np.linalg.qr(rng.randn(max(source_width, target_width),
                                min(source_width, target_width)))
  return q[:source_width] if source_width >= target_width else q.T[:, :target_width]


def recycling(family: Family, suite: Suite, go: _Runner, rate_of) -> dict[str, Any]:
  """Lester et al. 2022 on every ordered pair of the family's backbones (sizes x
  pretraining seeds), on the binary task by rank classification.

  Support: the most frequent pieces of pretraining, skipping `recycle_skip`,
  `recycle_take` of them (the paper's 1,000 and 4,000). Success: the recycled
  prompt beats the target's strongest zero-shot baseline (no prompt;
  untrained random-uniform, sampled-vocabulary and class-label prompts).
  Controls: the same recyclers applied to an untrained prompt; a random
  orthogonal map (scaled to the target's embedding norm); and the rate a
  prompt answering at random would reach under the same rule, simulated.
  """
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning.recycling import methods as recycling_lib
  from prompt_tuning.runtime import freezing
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import ModelSpec
  task, labels = family.tasks.binary, family.tasks.class_labels
  lengths, length = family.tasks.feature_lengths, suite.family_prompt_length
  ids = np.asarray(family.frequent_ids())
  support = ids[suite.recycle_skip:suite.recycle_skip + suite.recycle_take]

  setups: dict[str, Any] = {}

  def target_setup(bb: Backbone):
    """The target with a soft prompt, built (and its programs compiled) once; each
    prompt is swapped into its parameters."""
    if bb.label not in setups:
      setups[bb.label] = setup_lib.build(ModelSpec(bb.config, bb.path, soft.SoftPrompt(length)),
                                         init_trainable=False)
    return setups[bb.label]

  def score(bb: Backbone, prompt_PH) -> float:
    setup = target_setup(bb)
    if prompt_PH is None:
      plain = setup_lib.build(ModelSpec(bb.config, bb.path, None), init_trainable=False)
      return score_detail(plain.model, plain.frozen, task, suite.test_examples, split="test",
                          feature_lengths=lengths, class_labels=labels)[0]
    params = freezing.merge({"encoder_prompt": {"prompt": np.asarray(prompt_PH, np.float32)}},
                            setup.frozen)
    return score_detail(setup.model, params, task, suite.test_examples, split="test",
                        feature_lengths=lengths, class_labels=labels)[0]

  def untrained(bb: Backbone, init: str, seed: int = 0) -> np.ndarray:
    module = go.prompt(init, task=task).prompt(bb.path, seed)
    setup = setup_lib.build(ModelSpec(bb.config, bb.path, module))
    return np.asarray(setup.trainable["encoder_prompt"]["prompt"])

  models = list(family.backbones)
  baselines = {b.label: {"no prompt": score(b, None),
                         **{init.replace("_", " "): score(b, untrained(b, init))
                            for init in INITS}} for b in models}
  sources = {}
  for b in models:
    for seed in suite.recycle_prompt_seeds:
      r = go(go.prompt(rate=rate_of[(b.name, "prompt")]), b, seed, task)
      sources[(b.label, seed)] = (r["score"], np.load(r["run_dir"] + "/prompt.npy"))
  size_rank = {s: i for i, s in enumerate(family.sizes())}
  norm = {b.label: float(np.linalg.norm(initializers.load_embeddings(b.path)[support], axis=1)
                         .mean()) for b in models}
  rows = []
  for src in models:
    blank = untrained(src, "sampled_vocab", seed=10_000)
    for tgt in models:
      if src is tgt:
        continue
      best = max(baselines[tgt.label].values())
      chance_map = _orthogonal(src.config.emb_dim, tgt.config.emb_dim, seed=len(rows))
      for seed in suite.recycle_prompt_seeds:
        source_score, prompt_PH = sources[(src.label, seed)]
        orth = prompt_PH @ chance_map * (norm[tgt.label] / max(norm[src.label], 1e-9))
        orth_score = score(tgt, orth)
        for method in suite.family_recyclers:
          recycler = recycling_lib.recycler_for(src.path, tgt.path, method, support=support)
          got, blank_got = score(tgt, recycler(prompt_PH)), score(tgt, recycler(blank))
          rows.append(dict(source=src.label, target=tgt.label, prompt_seed=seed, method=method,
                           source_score=source_score, recycled=got, untrained_recycled=blank_got,
                           orthogonal=orth_score, best_baseline=best, success=bool(got > best),
                           untrained_success=bool(blank_got > best),
                           orthogonal_success=bool(orth_score > best),
                           larger_target=size_rank[tgt.name] > size_rank[src.name],
                           smaller_target=size_rank[tgt.name] < size_rank[src.name]))
      go.progress()
  classes = len(labels.get(task, ())) or 2
  chance = stats.random_answer_success_rate([r["best_baseline"] for r in rows
                                             if r["method"] == suite.family_recyclers[0]],
                                            suite.test_examples, classes)
  return dict(task=task, support=dict(skip=suite.recycle_skip, take=suite.recycle_take),
              baselines=baselines, rows=rows, random_answer_success=chance, classes=classes,
              sources={f"{k[0]} seed {k[1]}": v[0] for k, v in sources.items()})


def rows_of(rows: Sequence[dict[str, Any]], **match) -> list[dict[str, Any]]:
  """The rows whose fields equal every `match`."""
  return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def chance_of(labels, task: str) -> float:
  """The accuracy (%) of answering uniformly at random among `task`'s class labels: the
  bar a run must clear to have learned anything (the family's tasks are balanced)."""
  return 100.0 / max(len(labels.get(task, ())), 2)


def learned(run: dict[str, Any], chance: float) -> bool:
  """Did a run beat chance on its test split (one-sided exact binomial, p < 0.05)?"""
  correct = run["test_correct"]
  return stats.above_chance(correct.count("1"), len(correct), chance / 100.0)


def none_learned(chance: float) -> str:
  """The reason a comparison between prompts that all stayed at chance is not a test."""
  return (f"no prompt on either side beats chance ({chance:.0f}%) on the test split "
          "(one-sided exact binomial test, p < 0.05): at this size the prompts did not "
          "learn the task, so any difference is noise")


def learned_sources(rec: dict[str, Any], examples: int) -> set[str]:
  """The source backbones whose own trained prompt beats that backbone's strongest
  zero-shot baseline (one-sided exact binomial on the test split, p < 0.05): a
  prompt that did not learn its task has nothing to carry to another backbone."""
  out = set()
  for source, score in {(r["source"], r["source_score"]) for r in rec["rows"]}:
    bar = max(rec["baselines"][source].values())
    if stats.above_chance(round(score * examples / 100.0), examples, bar / 100.0):
      out.add(source)
  return out


def _rate(rows, key="success") -> float:
  return 100.0 * float(np.mean([r[key] for r in rows])) if rows else float("nan")


def claims(fam: dict[str, Any], suite: Suite) -> list[dict[str, Any]]:
  """The family experiments' claims, each against its control."""
  from benchmarks.research.claims import _across_seeds
  out = []
  name, task = fam["name"], fam["task"]
  untestable = fam.get("untestable", {})
  params = {b["size"]: b["parameters"] for b in fam["backbones"] if b["seed"] == 0}
  sizes = sorted(params, key=params.get)

  def gate(key: str, row: dict[str, Any]) -> dict[str, Any]:
    """A claim the family cannot test keeps its numbers, with the family's reason."""
    if key in untestable:
      return {**row, "verdict": stats.not_testable(untestable[key])}
    return row

  gaps = {}
  for size in sizes:
    ft = {r["seed"]: r["score"] for r in fam["scale"]
          if r["size"] == size and r["family_method"] == "finetune"}
    pt = {r["seed"]: r["score"] for r in fam["scale"]
          if r["size"] == size and r["family_method"] == "prompt"}
    gaps[size] = [ft[s] - pt[s] for s in sorted(set(ft) & set(pt))]
  claim = f"Lester 2021: the fine-tuning minus prompt-tuning gap shrinks as the backbone grows ({task}, {name})"
  control = f"the same gap at the smallest size ({sizes[0]})"
  numbers = "; ".join(f"{s} ({params[s] / 1e6:.2f}M): {np.mean(g):+.1f}" for s, g in gaps.items()
                      if g)
  if len(sizes) < 2:
    out.append(gate("scale", stats.untestable(claim, control, "one size", numbers)))
  else:
    logp = np.log10([params[s] for s in sizes])
    slope = np.polyfit(logp, [np.mean(gaps[s]) for s in sizes], 1)[0]
    row = _across_seeds(claim, control, gaps[sizes[-1]], gaps[sizes[0]])
    row["numbers"] = f"{numbers}; slope {slope:+.1f} points per decade of parameters"
    if row.get("p") is not None:
      row["verdict"] = stats.verdict(row["p"], row["effect"], expected_sign=-1)
    out.append(gate("scale", row))
  small = (fam["init"] or fam["length"] or [{"size": sizes[0]}])[0]["size"]
  chance = fam["chance"]

  def prompts_compared(claim: str, control: str, a: list, b: list) -> dict[str, Any]:
    """Two sets of prompt runs across seeds; not a test when none of them learned."""
    row = _across_seeds(claim, control, [r["score"] for r in a], [r["score"] for r in b])
    if row.get("p") is not None and not any(learned(r, chance) for r in a + b):
      return stats.untestable(claim, control, none_learned(chance), row["numbers"])
    return row

  for init in ("sampled_vocab", "class_labels"):
    out.append(gate("init", prompts_compared(
        f"Lester 2021: {init.replace('_', ' ')} init beats random uniform ({task}, {name} "
        f"{small})", "random-uniform init", rows_of(fam["init"], init=init),
        rows_of(fam["init"], init="random_uniform"))))
  lengths = sorted({r["length"] for r in fam["length"]})
  if 1 in lengths and len(lengths) > 1:
    longer = suite.family_prompt_length if suite.family_prompt_length in lengths else lengths[-1]
    out.append(gate("length", prompts_compared(
        f"Lester 2021: a {longer}-token prompt beats a 1-token prompt ({task}, {name} "
        f"{small})", "a 1-token prompt", rows_of(fam["length"], length=longer),
        rows_of(fam["length"], length=1))))
  for r in fam["ensemble"]:
    vote, selected = correct_vector(r["vote_correct"]), correct_vector(r["selected_correct"])
    members = rows_of(fam["scale"], size=r["size"], family_method="prompt")[:r["members"]]
    where = f"{task}, {name} {r['size']}, {r['members']} prompts"
    pairs = ((f"Lester 2021: an ensemble beats the best single prompt ({where})",
              f"the single prompt with the best validation score (seed {r['selected_seed']})",
              lambda: stats.mcnemar(vote, selected),
              f"vote {r['vote']:.1f} vs selected {r['selected_score']:.1f} (test split)"),
             (f"Lester 2021: an ensemble beats the average prompt ({where})",
              "the members' mean accuracy on each example",
              lambda: stats.paired_bootstrap(100.0 * vote, 100.0 * np.asarray(r["mean_correct"])),
              f"vote {r['vote']:.1f} vs mean {r['single_mean']:.1f}"))
    for claim_name, control, test, numbers in pairs:
      if not any(learned(m, chance) for m in members):
        out.append(gate("ensemble", stats.untestable(claim_name, control, none_learned(chance),
                                                     numbers)))
      else:
        out.append(gate("ensemble", stats.claim(claim_name, control, test(), numbers=numbers)))
  out += recycling_claims(fam, suite, gate)
  return out


def recycling_claims(fam: dict[str, Any], suite: Suite, gate) -> list[dict[str, Any]]:
  """Lester 2022's claims, over the cases whose source prompt learned its task (the
  rates over every case are in the numbers)."""
  from benchmarks.research.claims import _across_seeds
  out, name, rec = [], fam["name"], fam["recycling"]
  chance = rec["random_answer_success"]
  examples = suite.test_examples
  kept = learned_sources(rec, examples)
  sources = sorted({r["source"] for r in rec["rows"]})
  used = (f"the {len(kept)} of {len(sources)} source prompts that beat their own backbone's "
          f"strongest zero-shot baseline ({', '.join(sorted(kept)) or 'none'})")
  no_source = ("no source prompt beats its own backbone's strongest zero-shot baseline "
               "(one-sided exact binomial test, p < 0.05): there is no learned prompt to recycle")
  for method in suite.family_recyclers:
    every = [r for r in rec["rows"] if r["method"] == method]
    rows = [r for r in every if r["source"] in kept]
    claim = (f"Lester 2022: {method} recycling beats the target's strongest zero-shot baseline "
             f"more often than chance ({rec['task']}, {name})")
    control = "the success rate of a prompt answering at random under the same rule (simulated)"
    compared = (f"Lester 2022: a {method}-recycled trained prompt scores above a recycled "
                f"untrained prompt ({rec['task']}, {name})")
    if not rows:
      out.append(gate("recycling", stats.untestable(claim, control, no_source)))
      out.append(gate("recycling", stats.untestable(
          compared, "the same recycler applied to an untrained prompt", no_source)))
      continue
    rows_chance = stats.random_answer_success_rate(
        [r["best_baseline"] for r in rows], examples,
        rec.get("classes", 2))
    numbers = (f"{_rate(rows):.1f}% of {len(rows)} cases from {used} (every case: "
               f"{_rate(every):.1f}% of {len(every)}); paper's best setting: "
               f"{PAPER_RECYCLING_SUCCESS}%; controls: untrained prompt recycled "
               f"{_rate(rows, 'untrained_success'):.1f}%, random orthogonal map "
               f"{_rate(rows, 'orthogonal_success'):.1f}%, random answers {rows_chance:.1f}% "
               f"(simulated; every case: {chance:.1f}%)")
    out.append(gate("recycling", stats.claim(
        claim, control, stats.binomial_test(sum(r["success"] for r in rows), len(rows),
                                            rows_chance / 100.0), numbers=numbers)))
    out.append(gate("recycling", stats.claim(
        compared, "the same recycler applied to an untrained prompt",
        stats.paired_bootstrap([r["recycled"] for r in rows],
                               [r["untrained_recycled"] for r in rows]),
        numbers=f"{np.mean([r['recycled'] for r in rows]):.1f} vs "
                f"{np.mean([r['untrained_recycled'] for r in rows]):.1f} (mean accuracy, "
                f"{len(rows)} cases from learned source prompts)")))
  cases = [r for r in rec["rows"] if r["source"] in kept]
  larger = [float(r["success"]) * 100 for r in cases if r["larger_target"]]
  smaller = [float(r["success"]) * 100 for r in cases if r["smaller_target"]]
  claim = f"Lester 2022: recycling toward a larger target succeeds more often ({name})"
  control = "recycling toward a smaller target"
  if len(larger) >= 2 and len(smaller) >= 2:
    out.append(gate("recycling", _across_seeds(claim, control, larger, smaller,
                                                unit="recycled prompts from learned sources")))
  else:
    why = no_source if not kept else "fewer than two cases toward a larger and a smaller target"
    out.append(gate("recycling", stats.untestable(claim, control, why)))
  return out
