"""The research suite: do the papers' central claims hold on the synthetic family?

    python -m benchmarks.research            # the whole suite (target: <= 90 min, 2 cores)
    python -m benchmarks.research --quick    # a smoke run of every stage (<= 3 min)

Backbones: T5 1.1-style models over the byte vocabulary in three sizes
(`tiny`, `small`, `medium`: 0.25M, 1.3M and 4.3M parameters), pretrained on
`research_pretrain` (the quickstart's seven string tasks plus two
classification skills; see prompt_tuning/tasks/research.py) and cached under
the project cache like the quickstart's. Held-out formats: generation,
composition of two skills, classification (rank classification over yes/no),
and a multi-task mixture. Every figure is the mean and standard deviation
over `seeds` (3) runs that differ in the prompt's initialization and the
data order.

Experiments and the claims they test (each reported as reproduced or not,
with its numbers):

  scale     Lester et al. 2021: the gap between prompt tuning and full
            fine-tuning shrinks as the backbone grows.
  init      Lester et al. 2021: class-label and sampled-vocabulary
            initializations beat random-uniform at small sizes.
  length    Lester et al. 2021: longer prompts help, up to a point.
  ensemble  Lester et al. 2021: a majority vote of the 3 prompts of the
            scale experiment beats their average single score.

A figure where every method and seed scores the same 0% or 100% fails the
run, naming the task: such a table cannot tell a right implementation from
a wrong one, so the task must be made harder instead of reported.

Runs are cached (each run folder keeps its result), so an interrupted suite
resumes where it stopped. Results: research.json, research.md and PNG plots
next to this file (`--out` elsewhere; the quick run writes to a temporary
folder unless given `--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.train_step import cpu_info, describe_cpu  # noqa: E402  (one CPU report)


class SuiteError(RuntimeError):
  """A figure that cannot separate methods, or a stage that could not run."""


@dataclasses.dataclass(frozen=True)
class Suite:
  """What the suite runs. `FULL` and `QUICK` below are the two presets."""
  sizes: tuple[str, ...] = ("tiny", "small", "medium")
  pretrain_steps: tuple[tuple[str, int], ...] = (("tiny", 2000), ("small", 3000),
                                                 ("medium", 3000))
  seeds: tuple[int, ...] = (0, 1, 2)
  # Prompt tuning's steps (the paper trains far longer; these are sized for
  # two CPU cores, and chosen so that no task saturates).
  steps: int = 300
  finetune_steps: int = 300
  batch_size: int = 32
  prompt_length: int = 10
  lengths: tuple[int, ...] = (1, 3, 10, 30)
  eval_examples: int = 256
  scale_tasks: tuple[str, ...] = ("research_compose_bare", "research_sorted_bare")
  init_task: str = "research_sorted_bare"
  length_task: str = "research_compose_bare"

  def pretrain_steps_of(self, size: str) -> int:
    return dict(self.pretrain_steps)[size]


FULL = Suite()
# Every stage once, on one task: what the test suite runs.
QUICK = Suite(sizes=("tiny",), pretrain_steps=(("tiny", 150),), steps=20, finetune_steps=20,
              lengths=(1, 10), eval_examples=32, scale_tasks=("research_sorted_bare",),
              length_task="research_sorted_bare")


# Backbones.


def backbone(size: str, suite: Suite, cache_dir: Optional[str] = None) -> str:
  """The pretrained checkpoint folder of one size (trained once, then cached)."""
  from prompt_tuning import quickstart
  cfg = quickstart.PretrainConfig(size=size, steps=suite.pretrain_steps_of(size),
                                  mixture="research_pretrain")
  return quickstart.pretrain(cfg, cache_dir, progress=False)


def count_parameters(tree: Any) -> int:
  import jax
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# One run: train a method on a task, score it on the validation split.


@dataclasses.dataclass(frozen=True)
class Method:
  """A trainable part and how to train it.

  `prompt(backbone_path, seed)` builds the prompt module (None: no prompt);
  `rules` names the trainable parameters (freezing rules); `optimizer` is
  "prompt" (the paper's Adafactor, constant 0.3) or "finetune" (Adafactor at
  1e-3, T5's fine-tuning setting).
  """
  name: str
  prompt: Callable[[str, int], Any]
  rules: str = "prompt"
  optimizer: str = "prompt"


def _optimizer(kind: str):
  import optax
  from prompt_tuning.train import optimizers
  if kind == "finetune":
    return optax.adafactor(1e-3)
  return optimizers.prompt_tuning_adafactor()


def _rules(kind: str):
  from prompt_tuning.train import freezing
  return {"prompt": freezing.PROMPT_TUNING_RULES,
          "finetune": freezing.FULL_FINETUNING_RULES}[kind]


def score_of(model, params, task: str, num: int, ensemble: int = 0) -> float:
  """Exact match (generation) or rank-classification accuracy (%) on validation."""
  from prompt_tuning import decoding, evaluation
  from prompt_tuning.runtime import data as data_lib
  from prompt_tuning.tasks import research, synthetic
  task_obj = data_lib.get_task_or_mixture(task)
  examples = data_lib.eval_examples(task, "validation", synthetic.FEATURE_LENGTHS, num)
  labels = research.CLASS_LABELS if task in research.CLASSIFICATION else None
  preds = evaluation.predict(model, params, examples,
                             task_obj.output_features["targets"].vocabulary,
                             synthetic.FEATURE_LENGTHS["inputs"], 64,
                             decoding.DecodingConfig(max_decode_length=8),
                             class_labels=labels, ensemble_prompts=ensemble,
                             ensemble_method="majority_vote")
  return float(evaluation.compute_metrics(task_obj, examples,
                                          [p for p, _ in preds])["exact_match"])


def run_dir_of(work_dir: str, method: str, task: str, size: str, seed: int, steps: int) -> str:
  """The folder of one run (its checkpoint, result.json and, for prompts, prompt.npy)."""
  slug = "".join(c if c.isalnum() else "_" for c in method)
  return os.path.join(work_dir, "runs", f"{task}__{size}__{slug}__seed{seed}__{steps}")


def run(method: Method, task: str, size: str, seed: int, suite: Suite, work_dir: str,
        steps: Optional[int] = None) -> dict[str, Any]:
  """Trains and scores one (method, task, size, seed); cached in its run folder."""
  from prompt_tuning import quickstart
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import DataSpec, ModelSpec
  from prompt_tuning.tasks import synthetic
  from prompt_tuning.train import freezing, loop
  steps = steps or (suite.finetune_steps if method.rules == "finetune" else suite.steps)
  run_dir = run_dir_of(work_dir, method.name, task, size, seed, steps)
  result_file = os.path.join(run_dir, "result.json")
  if os.path.exists(result_file):
    with open(result_file) as f:
      return json.load(f)
  path = backbone(size, suite)
  spec = ModelSpec(quickstart.backbone_config(size), path, method.prompt(path, seed),
                   trainable_rules=_rules(method.rules))
  start = time.time()
  loop.train(model_dir=run_dir, model=spec,
             data=DataSpec(task, synthetic.FEATURE_LENGTHS, suite.batch_size, seed=seed),
             train_steps=steps, optimizer=_optimizer(method.optimizer), seed=seed,
             checkpoint_period=steps, keep_checkpoints=1, log_period=max(steps // 4, 1),
             progress=False)
  seconds = time.time() - start
  setup = setup_lib.build(spec)
  store = checkpoints_lib.CheckpointStore(run_dir)
  trained = store.restore_trainable(setup.abstract.trainable)
  store.close()
  result = dict(method=method.name, task=task, size=size, seed=seed, steps=steps,
                score=score_of(setup.model, freezing.merge(trained, setup.frozen), task,
                               suite.eval_examples),
                trainable_parameters=count_parameters(trained),
                train_seconds=round(seconds, 1))
  if method.rules == "prompt":
    prompt = trained.get("encoder_prompt", {}).get("prompt")
    if prompt is not None:
      np.save(os.path.join(run_dir, "prompt.npy"), np.asarray(prompt))
  with open(result_file, "w") as f:
    json.dump(result, f)
  return result


# Methods.


def soft_prompt(length: int, init: str = "sampled_vocab") -> Callable[[str, int], Any]:
  """A SoftPrompt factory: random-uniform, sampled-vocabulary or class-label init."""
  def build(path: str, seed: int):
    from prompt_tuning.prompts import initializers, soft
    from prompt_tuning.tasks import research
    import seqio
    if init == "random_uniform":
      return soft.SoftPrompt(length, init=initializers.random_uniform(0.5))
    if init == "sampled_vocab":
      # Rows 3..258 are the byte vocabulary's real tokens (0-2: pad, EOS, UNK).
      return soft.SoftPrompt(length, init=initializers.sampled_vocab(
          path, length, first_n=259, seed=seed))
    if init == "class_labels":
      return soft.SoftPrompt(length, init=initializers.class_labels(
          path, seqio.ByteVocabulary(), research.CLASS_LABELS, length, seed=seed))
    raise ValueError(f"Unknown init {init!r}")
  return build


def prompt_tuning(suite: Suite, length: Optional[int] = None,
                  init: str = "sampled_vocab") -> Method:
  length = length or suite.prompt_length
  return Method(f"prompt tuning ({init}, {length} tokens)", soft_prompt(length, init))


FINETUNE = Method("full fine-tuning", lambda path, seed: None, rules="finetune",
                  optimizer="finetune")


# Experiments. Each returns its rows; `claims` reads them.


def _aggregate(rows: Sequence[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
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


def check_separates(rows: Sequence[dict[str, Any]], experiment: str) -> None:
  """Fails on a task where every run of every method scored the same 0% or 100%."""
  by_task: dict[str, set[float]] = {}
  for r in rows:
    by_task.setdefault(f"{r['task']} ({r['size']})", set()).add(round(r["score"], 6))
  for task, scores in by_task.items():
    if len(scores) == 1 and next(iter(scores)) in (0.0, 100.0):
      raise SuiteError(
          f"{experiment}: every method and seed scores {next(iter(scores)):.0f}% on {task}; "
          "this figure cannot separate methods: make the task harder (or easier) instead "
          "of reporting it")


def experiment_scale(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  rows = []
  for size in suite.sizes:
    for task in suite.scale_tasks:
      for method in (prompt_tuning(suite), FINETUNE):
        for seed in suite.seeds:
          rows.append(run(method, task, size, seed, suite, work_dir))
          progress()
  return rows


def experiment_init(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  rows = []
  size = suite.sizes[0]
  for init in ("random_uniform", "sampled_vocab", "class_labels"):
    for seed in suite.seeds:
      rows.append(run(prompt_tuning(suite, init=init), suite.init_task, size, seed, suite,
                      work_dir))
      progress()
  return rows


def experiment_length(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  rows = []
  size = suite.sizes[0]
  for length in suite.lengths:
    for seed in suite.seeds:
      rows.append({**run(prompt_tuning(suite, length=length), suite.length_task, size, seed,
                         suite, work_dir), "length": length})
      progress()
  return rows


def experiment_ensemble(suite: Suite, work_dir: str, progress,
                        scale_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Majority vote of the scale experiment's prompts (one per seed), per task and size."""
  from prompt_tuning import quickstart
  from prompt_tuning.prompts import multi_task
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import ModelSpec
  from prompt_tuning.train import freezing
  name = prompt_tuning(suite).name
  rows = []
  for size in suite.sizes:
    for task in suite.scale_tasks:
      members = [r for r in scale_rows
                 if r["method"] == name and r["task"] == task and r["size"] == size]
      prompts = np.stack([np.load(os.path.join(
          run_dir_of(work_dir, name, task, size, r["seed"], r["steps"]), "prompt.npy"))
          for r in members])
      path = backbone(size, suite)
      spec = ModelSpec(quickstart.backbone_config(size), path, multi_task.PromptBank(
          len(members), suite.prompt_length))
      setup = setup_lib.build(spec)
      # The bank's rows are the trained prompts, one per seed.
      bank = {"encoder_prompt": {"prompts": prompts}}
      vote = score_of(setup.model, freezing.merge(bank, setup.frozen), task,
                      suite.eval_examples, ensemble=len(members))
      single = [r["score"] for r in members]
      rows.append(dict(task=task, size=size, members=len(members), vote=vote,
                       single_mean=float(np.mean(single)),
                       single_std=float(np.std(single, ddof=1)) if len(single) > 1 else 0.0,
                       single_best=float(np.max(single))))
      progress()
  return rows


# Claims.


def _verdict(ok: bool) -> str:
  return "reproduced" if ok else "not reproduced"


def claims(results: dict[str, Any], suite: Suite) -> list[dict[str, str]]:
  out = []
  scale = _aggregate(results["scale"], "task", "size", "method")
  ft, pt = FINETUNE.name, prompt_tuning(suite).name
  for task in suite.scale_tasks:
    gaps = []
    for size in suite.sizes:
      by = {r["method"]: r["mean"] for r in scale if r["task"] == task and r["size"] == size}
      gaps.append(by[ft] - by[pt])
    text = ", ".join(f"{s}: {g:+.1f}" for s, g in zip(suite.sizes, gaps))
    ok = len(gaps) > 1 and gaps[-1] < gaps[0]
    out.append(dict(claim=f"Lester 2021: the fine-tuning minus prompt-tuning gap shrinks with "
                          f"size ({task})",
                    verdict=_verdict(ok) if len(gaps) > 1 else "not tested (one size)",
                    numbers=f"gap in points by size: {text}"))
  init = {r["method"]: r for r in _aggregate(results["init"], "method")}
  rand = next(v for k, v in init.items() if "random_uniform" in k)
  for kind in ("sampled_vocab", "class_labels"):
    other = next(v for k, v in init.items() if kind in k)
    out.append(dict(claim=f"Lester 2021: {kind.replace('_', ' ')} init beats random "
                          f"({suite.init_task}, {suite.sizes[0]})",
                    verdict=_verdict(other["mean"] > rand["mean"]),
                    numbers=f"{other['mean']:.1f} +- {other['std']:.1f} vs random "
                            f"{rand['mean']:.1f} +- {rand['std']:.1f}"))
  by_len = sorted(_aggregate(results["length"], "length"), key=lambda r: r["length"])
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
  return out


# Writing.


def write(results: dict[str, Any], suite: Suite, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "research.json"), "w") as f:
    json.dump(results, f, indent=1)
  info = results["machine"]
  lines = ["# Research suite: the papers' claims on the synthetic family", "",
           f"Written by `python -m benchmarks.research{' --quick' if results['quick'] else ''}` "
           f"in {results['seconds'] / 60:.1f} min on {describe_cpu(info)} (AVX2: "
           f"{'yes' if info['avx2'] else 'no'}; load average at start "
           f"{info['load_average'][0]:.1f}). Raw figures: `research.json`. "
           f"Mean +- standard deviation over seeds {list(suite.seeds)}.", "",
           "## Claims", "", "| claim | verdict | numbers |", "| --- | --- | --- |"]
  for c in results["claims"]:
    lines.append(f"| {c['claim']} | {c['verdict']} | {c['numbers']} |")
  lines += ["", "## Scale: prompt tuning vs full fine-tuning", "",
            "| task | size | method | score | trainable parameters |",
            "| --- | --- | --- | --- | --- |"]
  for r in _aggregate(results["scale"], "task", "size", "method"):
    lines.append(f"| {r['task']} | {r['size']} | {r['method']} | {r['mean']:.1f} +- "
                 f"{r['std']:.1f} | {r['trainable_parameters']:,} |")
  lines += ["", "## Initialization", "", "| method | score |", "| --- | --- |"]
  for r in _aggregate(results["init"], "method"):
    lines.append(f"| {r['method']} | {r['mean']:.1f} +- {r['std']:.1f} |")
  lines += ["", "## Prompt length", "", "| length | score | trainable parameters |",
            "| --- | --- | --- |"]
  for r in sorted(_aggregate(results["length"], "length"), key=lambda r: r["length"]):
    lines.append(f"| {r['length']} | {r['mean']:.1f} +- {r['std']:.1f} | "
                 f"{r['trainable_parameters']:,} |")
  lines += ["", "## Ensembles (majority vote of the scale experiment's prompts)", "",
            "| task | size | vote | single prompts |", "| --- | --- | --- | --- |"]
  for r in results["ensemble"]:
    lines.append(f"| {r['task']} | {r['size']} | {r['vote']:.1f} | {r['single_mean']:.1f} +- "
                 f"{r['single_std']:.1f} |")
  with open(os.path.join(out_dir, "research.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot(results, suite, out_dir)


def plot(results: dict[str, Any], suite: Suite, out_dir: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  scale = _aggregate(results["scale"], "task", "size", "method")
  backbone_params = results["backbone_parameters"]
  for task in suite.scale_tasks:
    for method in (prompt_tuning(suite).name, FINETUNE.name):
      pts = [(backbone_params[r["size"]], r["mean"], r["std"]) for r in scale
             if r["task"] == task and r["method"] == method]
      pts.sort()
      axes[0].errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                       marker="o", capsize=3, label=f"{method.split(' (')[0]}, {task}")
  axes[0].set_xscale("log")
  axes[0].set(xlabel="backbone parameters", ylabel="score (%)", title="Scale")
  axes[0].legend(fontsize=7)
  by_len = sorted(_aggregate(results["length"], "length"), key=lambda r: r["length"])
  axes[1].errorbar([r["length"] for r in by_len], [r["mean"] for r in by_len],
                   [r["std"] for r in by_len], marker="o", capsize=3)
  axes[1].set_xscale("log")
  axes[1].set(xlabel="prompt length (tokens)", ylabel="score (%)",
              title=f"Prompt length ({suite.length_task}, {suite.sizes[0]})")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "research_scale_and_length.png"), dpi=110)
  plt.close(fig)


# Entry point.


def run_suite(suite: Suite, work_dir: str, quick: bool = False,
              show_progress: bool = True) -> dict[str, Any]:
  from prompt_tuning import quickstart
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  import prompt_tuning.tasks  # noqa: F401  (registers the research tasks)
  from tqdm import tqdm
  start = time.time()
  n_runs = (len(suite.sizes) * len(suite.scale_tasks) * 2 * len(suite.seeds)
            + 3 * len(suite.seeds) + len(suite.lengths) * len(suite.seeds)
            + len(suite.sizes) * len(suite.scale_tasks))
  bar = tqdm(total=len(suite.sizes) + n_runs, desc="research", disable=not show_progress)
  for size in suite.sizes:
    bar.set_postfix_str(f"pretraining {size}")
    backbone(size, suite)
    bar.update()
  step = lambda: bar.update()  # noqa: E731
  results: dict[str, Any] = {"quick": quick, "suite": dataclasses.asdict(suite),
                             "machine": cpu_info()}
  results["backbone_parameters"] = {
      size: count_parameters(params_lib.abstract_params(T5(quickstart.backbone_config(size)))[0])
      for size in suite.sizes}
  for name, fn in (("scale", experiment_scale), ("init", experiment_init),
                   ("length", experiment_length)):
    bar.set_postfix_str(name)
    results[name] = fn(suite, work_dir, step)
    check_separates(results[name], name)
  bar.set_postfix_str("ensemble")
  results["ensemble"] = experiment_ensemble(suite, work_dir, step, results["scale"])
  bar.close()
  results["claims"] = claims(results, suite)
  results["seconds"] = time.time() - start
  return results


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="a smoke run of every stage")
  parser.add_argument("--out", default=None, help="where results go (default: benchmarks/, "
                      "or a temporary folder with --quick)")
  parser.add_argument("--work_dir", default=None, help="run folders (cached between runs)")
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args(argv)
  from prompt_tuning.cli import environment
  environment.configure()
  import logging
  logging.basicConfig(level=logging.WARNING)
  suite = QUICK if args.quick else FULL
  out = args.out or (tempfile.mkdtemp(prefix="research_quick_") if args.quick else HERE)
  work_dir = args.work_dir or os.path.join(
      environment.project_cache_dir(), "research_quick" if args.quick else "research")
  try:
    results = run_suite(suite, work_dir, quick=args.quick, show_progress=not args.no_progress)
  except SuiteError as e:
    print(f"research suite failed: {e}", file=sys.stderr)
    return 1
  write(results, suite, out)
  for c in results["claims"]:
    print(f"{c['verdict']:>15}  {c['claim']}: {c['numbers']}")
  print(f"wrote {os.path.join(out, 'research.md')} ({results['seconds'] / 60:.1f} min)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
