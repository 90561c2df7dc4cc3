"""The byte family's experiments, each returning its rows (`claims` reads them),
and the whole suite (`run_suite`). The Lester et al. 2021 and 2022
experiments on a backbone family are in `experiments_family`."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks import machine
from benchmarks.research import claims as claims_lib
from benchmarks.research import stats
from benchmarks.research.config import Suite
from benchmarks.research.family import Family
from benchmarks.research.methods import (FINETUNE, fixed_prompt, hyper_parameter_count,
                                         multi_task_methods, prompt_tuning, single_task_methods)
from benchmarks.research.runs import (RUN_COUNTS, Method, byte_backbone, correct_of,
                                      count_parameters, prompt_file_of, run, score_detail)


def experiment_length(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  rows = []
  size = suite.sizes[0]
  for length in suite.lengths:
    for seed in suite.seeds_of_methods:
      rows.append({**run(prompt_tuning(suite, length=length), suite.length_task, size, seed,
                         suite, work_dir), "length": length})
      progress()
  return rows


def ensemble_row(members: Sequence[dict[str, Any]], bb, task: str, suite: Suite,
                 feature_lengths=None, class_labels=None) -> dict[str, Any]:
  """A majority vote of `members`' prompts (their selected steps) on the test split,
  beside the single prompt that validation selects and the members' mean, per example."""
  from prompt_tuning.prompts import multi_task
  from prompt_tuning.runtime import freezing
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import ModelSpec
  prompts = np.stack([np.load(prompt_file_of("", r)) for r in members])
  setup = setup_lib.build(ModelSpec(bb.config, bb.path, multi_task.PromptBank(
      len(members), prompts.shape[1])), init_trainable=False)  # the bank is given
  bank = {"encoder_prompt": {"prompts": prompts}}
  vote, vote_correct = score_detail(setup.model, freezing.merge(bank, setup.frozen), task,
                                    suite.test_examples, ensemble=len(members), split="test",
                                    feature_lengths=feature_lengths, class_labels=class_labels)
  best = max(members, key=lambda r: (r["validation_score"], -r["seed"]))
  single = [r["score"] for r in members]
  return dict(task=task, size=bb.name, members=len(members), vote=vote,
              vote_correct="".join("1" if c else "0" for c in vote_correct),
              selected_seed=best["seed"], selected_score=best["score"],
              selected_correct=best["test_correct"],
              mean_correct=np.mean([correct_of(r) for r in members], axis=0).round(4).tolist(),
              single_mean=float(np.mean(single)),
              single_std=float(np.std(single, ddof=1)) if len(single) > 1 else 0.0,
              single_best_on_test=float(np.max(single)))


def experiment_ensemble(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  """Prompts of `seeds` on each of `scale_tasks` (classification and generation), and
  their majority vote."""
  size, rows = suite.sizes[0], []
  for task in suite.scale_tasks:
    members = []
    for seed in suite.seeds:
      members.append(run(prompt_tuning(suite), task, size, seed, suite, work_dir))
      progress()
    rows.append(ensemble_row(members, byte_backbone(size, suite), task, suite))
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
  probe_steps = max(suite.steps // 10, suite.evaluations)
  probe = run(prompt_tuning(suite), suite.methods_task, suite.sizes[0], seed, suite, work_dir,
              steps=probe_steps)
  value, _ = spot.transfer(library, prompt_file_of(work_dir, probe))
  return fixed_prompt(f"SPoT (probe {probe_steps} steps, best source)", value)


def experiment_methods(suite: Suite, work_dir: str, progress) -> list[dict[str, Any]]:
  """Every single-task method of the library (or the suite's subset) on one format, equal steps."""
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


BYTE_EXPERIMENTS = {"length": experiment_length, "ensemble": experiment_ensemble,
                    "methods": experiment_methods, "multitask": experiment_multitask}


def run_suite(suite: Suite, work_dir: str, quick: bool = False, show_progress: bool = True,
              family: Optional[Family] = None) -> dict[str, Any]:
  """The byte experiments, the family experiments, then the claims; what `report.write` files.

  `family`: the backbone family of the Lester et al. experiments (None: the
  byte family, when `suite.family_experiments`).
  """
  from prompt_tuning import backbones
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  import prompt_tuning.tasks  # noqa: F401  (registers the research tasks)
  from tqdm import tqdm
  start, cpu_start = time.time(), time.process_time()
  RUN_COUNTS.update(trained=0, cached=0)
  bar = tqdm(desc="research", disable=not show_progress)
  step = lambda: bar.update()  # noqa: E731
  inseparable: list[str] = []
  results: dict[str, Any] = {"quick": quick, "suite": dataclasses.asdict(suite),
                             "machine": machine.cpu_info()}
  results["backbone_parameters"] = {
      size: count_parameters(params_lib.abstract_params(T5(backbones.backbone_config(size)))[0])
      for size in suite.sizes}
  for name in suite.byte_experiments:
    bar.set_postfix_str(name)
    results[name] = BYTE_EXPERIMENTS[name](suite, work_dir, step)
    if name != "ensemble":
      inseparable += stats.check_separates(results[name], name, suite.refuse_inseparable)
  if suite.family_experiments or family is not None:
    from benchmarks.research import experiments_family
    from benchmarks.research.family import byte_family
    family = family or byte_family(suite.sizes, suite.backbone_seeds, suite.pretrain_steps_of)
    bar.set_postfix_str(f"family {family.name}")
    results["family"] = experiments_family.run_family(family, suite, work_dir, step)
  results["inseparable"] = inseparable
  bar.close()
  results["claims"] = claims_lib.claims(results, suite)
  results["seconds"] = time.time() - start
  # This process's CPU seconds (user + system, all threads): on a shared machine
  # the figure that says what the run costs on cores of its own.
  results["cpu_seconds"] = time.process_time() - cpu_start
  fam = results.get("family") or {}
  results["runs"] = dict(RUN_COUNTS, train_minutes=round(sum(
      r["train_seconds"] for k in ("length", "methods", "multitask") for r in results.get(k, ()))
      / 60, 1), family_train_minutes=round(sum(
          r["train_seconds"] for k in ("scale", "init", "length") for r in fam.get(k, ())) / 60, 1))
  return results
