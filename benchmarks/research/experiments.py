"""The suite's experiments, each returning its rows (`stats.claims` reads them),
and the whole suite (`run_suite`)."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Sequence

import numpy as np

from benchmarks import machine
from benchmarks.research import stats
from benchmarks.research.config import Suite
from benchmarks.research.methods import (FINETUNE, fixed_prompt, hyper_parameter_count,
                                         multi_task_methods, prompt_tuning, single_task_methods,
                                         soft_prompt)
from benchmarks.research.runs import (RUN_COUNTS, Method, backbone, count_parameters,
                                      prompt_file_of, run, score_of)

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
    for seed in suite.seeds_of_methods:
      rows.append(run(prompt_tuning(suite, init=init), suite.init_task, size, seed, suite,
                      work_dir))
      progress()
  return rows


def experiment_length(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  rows = []
  size = suite.sizes[0]
  for length in suite.lengths:
    for seed in suite.seeds_of_methods:
      rows.append({**run(prompt_tuning(suite, length=length), suite.length_task, size, seed,
                         suite, work_dir), "length": length})
      progress()
  return rows


def experiment_ensemble(suite: Suite, work_dir: str, progress,
                        scale_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Majority vote of the scale experiment's prompts (one per seed), per task and size."""
  from prompt_tuning import backbones
  from prompt_tuning.prompts import multi_task
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import ModelSpec
  from prompt_tuning.runtime import freezing
  name = prompt_tuning(suite).name
  rows = []
  for size in suite.sizes:
    for task in suite.scale_tasks:
      members = [r for r in scale_rows
                 if r["method"] == name and r["task"] == task and r["size"] == size]
      prompts = np.stack([np.load(prompt_file_of(work_dir, r)) for r in members])
      path = backbone(size, suite)
      spec = ModelSpec(backbones.backbone_config(size), path, multi_task.PromptBank(
          len(members), suite.prompt_length))
      setup = setup_lib.build(spec, init_trainable=False)  # the bank is given
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


def source_prompts(suite: Suite, work_dir: str, progress) -> list[str]:
  """ATTEMPT's (and SPoT's) sources: plain prompts on the bare formats of the
  composition's two skills, on the first size, seed 0."""
  method = prompt_tuning(suite)
  files = []
  for task in suite.attempt_sources:
    files.append(prompt_file_of(work_dir, run(method, task, suite.sizes[0], 0, suite, work_dir)))
    progress()
  return files


def spot_method(suite: Suite, work_dir: str, sources: Sequence[str], seed: int) -> Method:
  """SPoT (Vu et al. 2022): a probe prompt trained briefly on the target task picks the
  most similar source (cosine of average tokens), which initializes prompt tuning."""
  from prompt_tuning.prompts import spot
  library = os.path.join(work_dir, "spot_library")
  if not os.path.exists(os.path.join(library, spot.INDEX)):
    for task, file in zip(suite.attempt_sources, sources):
      spot.add_source(library, task, task, file, overwrite=True)
  probe_steps = max(suite.steps // 10, 1)
  probe = run(prompt_tuning(suite), suite.methods_task, suite.sizes[0], seed, suite, work_dir,
              steps=probe_steps)
  value, _ = spot.transfer(library, prompt_file_of(work_dir, probe))
  return fixed_prompt(f"SPoT (probe {probe_steps} steps, best source)", lambda: value)


def experiment_methods(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  """Every single-task method of the library on one held-out format, equal steps."""
  sources = source_prompts(suite, work_dir, progress)
  rows = []
  size, task = suite.sizes[0], suite.methods_task
  for method in [prompt_tuning(suite), FINETUNE] + single_task_methods(suite, sources):
    if not suite.keeps(method):
      continue
    for seed in suite.seeds_of_methods:
      rows.append(run(method, task, size, seed, suite, work_dir))
      progress()
  for seed in suite.seeds_of_methods if suite.keeps(Method("SPoT", None)) else ():
    # SPoT's transferred prompt differs per seed (its probe does), so the name is shared.
    rows.append({**run(spot_method(suite, work_dir, sources, seed), task, size, seed, suite,
                       work_dir), "method": "SPoT (probe, best source)"})
    progress()
  return rows


def experiment_multitask(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  """Task-aware and input-dependent methods on the multi-task mixture, equal steps."""
  import seqio
  from prompt_tuning import backbones
  size, task = suite.sizes[0], suite.multitask_task
  num_tasks = len(seqio.get_mixture_or_task(task).tasks)
  width = backbones.backbone_config(size).emb_dim
  methods = multi_task_methods(suite, num_tasks, width, hyper_parameter_count(size, num_tasks))
  rows = []
  for method in methods:
    for seed in suite.seeds_of_methods:
      rows.append(run(method, task, size, seed, suite, work_dir))
      progress()
  return rows


def experiment_recycling(suite: Suite, work_dir: str, progress) -> dict[str, Any]:
  """Lester et al. 2022, scored as in the paper: rank classification; a recycled
  prompt succeeds when it beats the strongest zero-shot baseline on the target
  (no prompt; untrained random, sampled-vocabulary and class-label prompts)."""
  from prompt_tuning import backbones
  from prompt_tuning.recycling import methods as recycling
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import ModelSpec
  from prompt_tuning.runtime import freezing
  task = suite.recycle_task
  method = prompt_tuning(suite)
  models = [(size, bseed) for size in suite.sizes for bseed in suite.backbone_seeds]
  name_of = lambda m: f"{m[0]}_seed{m[1]}"  # noqa: E731
  path_of = {m: backbone(m[0], suite, seed=m[1]) for m in models}

  def score(model, prompt_module) -> float:
    spec = ModelSpec(backbones.backbone_config(model[0]), path_of[model], prompt_module)
    setup = setup_lib.build(spec)
    params = freezing.merge(setup.trainable, setup.frozen) if prompt_module else setup.frozen
    return score_of(setup.model, params, task, suite.eval_examples)

  baselines = {}
  for m in models:
    baselines[name_of(m)] = {
        "no prompt": score(m, None),
        **{init.replace("_", " "): score(m, soft_prompt(suite.prompt_length, init)(
            path_of[m], 0)) for init in ("random_uniform", "sampled_vocab", "class_labels")}}
    progress()
  sources = {}
  for m in models:
    for seed in suite.recycle_prompt_seeds:
      r = run(method, task, m[0], seed, suite, work_dir, backbone_seed=m[1])
      sources[(m, seed)] = (r["score"], prompt_file_of(work_dir, r))
      progress()
  from prompt_tuning.prompts import soft

  @functools.lru_cache(maxsize=None)
  def target_setup(tgt):
    """The target backbone with a soft prompt, built (and its decoder compiled) once;
    each recycled prompt is then swapped into its parameters."""
    return setup_lib.build(ModelSpec(backbones.backbone_config(tgt[0]), path_of[tgt],
                                     soft.SoftPrompt(suite.prompt_length)),
                           init_trainable=False)

  def score_recycled(tgt, prompt_PH: np.ndarray) -> float:
    setup = target_setup(tgt)
    assert setup.trainable["encoder_prompt"]["prompt"].shape == prompt_PH.shape
    trainable = {"encoder_prompt": {"prompt": np.asarray(prompt_PH, np.float32)}}
    return score_of(setup.model, freezing.merge(trainable, setup.frozen), task,
                    suite.eval_examples)

  rows = []
  for src in models:
    for tgt in models:
      if src == tgt:
        continue
      best = max(baselines[name_of(tgt)].values())
      for seed in suite.recycle_prompt_seeds:
        source_score, file = sources[(src, seed)]
        prompt_PH = np.load(file)
        for rm in suite.recycle_methods:
          recycler = recycling.recycler_for(path_of[src], path_of[tgt], rm,
                                            support=np.arange(3, 259))
          got = score_recycled(tgt, recycler(prompt_PH))
          rows.append(dict(source=name_of(src), target=name_of(tgt), prompt_seed=seed,
                           method=rm, source_score=source_score, recycled=got,
                           best_baseline=best, success=bool(got > best),
                           larger_target=suite.sizes.index(tgt[0]) > suite.sizes.index(src[0]),
                           smaller_target=suite.sizes.index(tgt[0]) < suite.sizes.index(src[0])))
      progress()
  rate = lambda rs: 100.0 * float(np.mean([r["success"] for r in rs])) if rs else float("nan")  # noqa: E731
  summary = {rm: dict(success=rate([r for r in rows if r["method"] == rm]),
                      to_larger=rate([r for r in rows if r["method"] == rm and r["larger_target"]]),
                      to_smaller=rate([r for r in rows if r["method"] == rm
                                       and r["smaller_target"]]),
                      mean_recycled=float(np.mean([r["recycled"] for r in rows
                                                   if r["method"] == rm])),
                      recycled=sum(r["method"] == rm for r in rows))
             for rm in suite.recycle_methods}
  return dict(task=task, baselines=baselines, rows=rows, summary=summary,
              sources={f"{name_of(m)} seed {s}": v[0] for (m, s), v in sources.items()})


def run_suite(suite: Suite, work_dir: str, quick: bool = False,
              show_progress: bool = True) -> dict[str, Any]:
  """Every experiment, then the claims; the results that `report.write` files."""
  from prompt_tuning import backbones
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  import prompt_tuning.tasks  # noqa: F401  (registers the research tasks)
  from tqdm import tqdm
  start = time.time()
  RUN_COUNTS.update(trained=0, cached=0)
  models = [(size, seed) for seed in suite.backbone_seeds for size in suite.sizes]
  n_single = 2 + 6  # prompt tuning, fine-tuning, single_task_methods
  n_models = len(models)
  n_runs = (len(suite.sizes) * len(suite.scale_tasks) * 2 * len(suite.seeds)
            + 3 * len(suite.seeds_of_methods)
            + len(suite.lengths) * len(suite.seeds_of_methods)
            + len(suite.sizes) * len(suite.scale_tasks)
            + len(suite.attempt_sources) + (n_single + 1) * len(suite.seeds_of_methods)
            + 4 * len(suite.seeds_of_methods)
            + n_models + n_models * len(suite.recycle_prompt_seeds) + n_models * (n_models - 1))
  bar = tqdm(total=n_runs, desc="research", disable=not show_progress)
  # Experiments on the first size run first; the other backbones are pretrained
  # (or found cached) when an experiment first needs them.
  step = lambda: bar.update()  # noqa: E731
  inseparable: list[str] = []
  results: dict[str, Any] = {"quick": quick, "suite": dataclasses.asdict(suite),
                             "machine": machine.cpu_info()}
  results["backbone_parameters"] = {
      size: count_parameters(params_lib.abstract_params(T5(backbones.backbone_config(size)))[0])
      for size in suite.sizes}
  for name, fn in (("init", experiment_init), ("length", experiment_length),
                   ("methods", experiment_methods), ("multitask", experiment_multitask),
                   ("scale", experiment_scale)):
    bar.set_postfix_str(name)
    results[name] = fn(suite, work_dir, step)
    inseparable += stats.check_separates(results[name], name, suite.refuse_inseparable)
  bar.set_postfix_str("ensemble")
  results["ensemble"] = experiment_ensemble(suite, work_dir, step, results["scale"])
  bar.set_postfix_str("recycling")
  results["recycling"] = experiment_recycling(suite, work_dir, step)
  inseparable += stats.check_separates(
      [dict(task=f"{suite.recycle_task}, recycled", size=r["target"], score=r["recycled"])
       for r in results["recycling"]["rows"]], "recycling", suite.refuse_inseparable)
  results["inseparable"] = inseparable
  bar.close()
  results["claims"] = stats.claims(results, suite)
  results["seconds"] = time.time() - start
  results["runs"] = dict(RUN_COUNTS, train_minutes=round(sum(
      r["train_seconds"] for k in ("scale", "init", "length", "methods", "multitask")
      for r in results[k]) / 60, 1))
  return results

