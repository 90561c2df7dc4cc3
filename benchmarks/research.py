"""The research suite: do the papers' central claims hold on the synthetic family?

    python -m benchmarks.research            # the whole suite (target: <= 90 min, 2 cores)
    python -m benchmarks.research --quick    # a smoke run of every stage (<= 3 min)

Backbones: T5 1.1-style models over the byte vocabulary in three sizes
(`tiny`, `small`, `medium`: 0.25M, 1.3M and 4.3M parameters) and two
pretraining seeds, pretrained on
`research_pretrain` (the quickstart's seven string tasks plus two
classification skills; see prompt_tuning/tasks/research.py) and cached under
the project cache like the quickstart's. Held-out formats: generation,
composition of two skills, classification (rank classification over yes/no),
and a multi-task mixture. Every figure is the mean and standard deviation
over `seeds` (3) runs that differ in the prompt's initialization and the
data order.

Experiments and the claims they test (each reported as reproduced or not,
with its numbers):

  scale      Lester et al. 2021: the gap between prompt tuning and full
             fine-tuning shrinks as the backbone grows; on the classification
             format and on the generation format (reverse a word).
  init       Lester et al. 2021: class-label and sampled-vocabulary
             initializations beat random-uniform at small sizes.
  length     Lester et al. 2021: longer prompts help, up to a point.
  ensemble   Lester et al. 2021: a majority vote of the 3 prompts of the
             scale experiment beats their average single score.
  methods    every single-task method of the library on the composition
             format, equal steps, with its trainable-parameter count: prompt
             tuning, full fine-tuning, deep prompts, prefix tuning, IA3,
             prompt + IA3, wayward prompts, SPoT and ATTEMPT (Asai et al.
             2022: ATTEMPT with good source prompts beats prompt tuning from
             scratch).
  multitask  the multi-task mixture: one static prompt, a multi-task prompt
             and HyperPrompt-Global at equal trainable parameters (He et al.
             2022), and ID-PT with no task index (Levine et al. 2022: ID-PT
             beats a static prompt).
  recycling  Lester et al. 2022, scored as in the paper: rank classification
             on a yes/no task, every ordered pair of sizes x pretraining
             seeds, success = beating the target's strongest zero-shot
             baseline; success rate per method, and toward larger vs smaller
             targets.

Open-book reading and recursive LMs (Levine et al. 2022) have their own
evidence script, benchmarks/giants.py.

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
import functools
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
  pretrain_steps: tuple[tuple[str, int], ...] = (("tiny", 2000), ("small", 1500),
                                                 ("medium", 1500))
  seeds: tuple[int, ...] = (0, 1, 2)
  # Prompt tuning's steps (the paper trains far longer; these are sized for
  # two CPU cores, and chosen so that no task saturates).
  steps: int = 300
  finetune_steps: int = 300
  batch_size: int = 32
  prompt_length: int = 10
  lengths: tuple[int, ...] = (1, 3, 10, 30)
  eval_examples: int = 256
  # The classification format (its prompts are also the recycling experiment's
  # sources on the seed-0 backbones) and the generation format.
  scale_tasks: tuple[str, ...] = ("research_sorted_bare", "research_reverse_bare")
  init_task: str = "research_sorted_bare"
  length_task: str = "research_compose_bare"
  # Every method of the library on one held-out format, and the task-aware
  # ones on the multi-task mixture (size: sizes[0]).
  methods_task: str = "research_compose_bare"
  multitask_task: str = "research_marked_multitask"
  # ATTEMPT's source prompts: plain prompts on the bare formats of the two
  # skills the composition is made of (sort, then reverse).
  attempt_sources: tuple[str, ...] = ("synthetic_sort_bare_indexed", "synthetic_reverse_bare")
  # Recycling (Lester et al. 2022): every ordered pair of the backbones
  # sizes x backbone_seeds, prompts trained on a classification task.
  backbone_seeds: tuple[int, ...] = (0, 1)
  recycle_task: str = "research_sorted_bare"
  recycle_prompt_seeds: tuple[int, ...] = (0, 1)
  # linear_combination is left out: with the exact minimum-norm least-squares fit
  # it is the same map as linear (both p S+ T; tests/test_recycling.py).
  recycle_methods: tuple[str, ...] = ("linear", "mlp")
  # The quick run's smoke test: only these methods (name prefixes; None: all),
  # and these seeds for every experiment but scale (None: `seeds`).
  method_subset: Optional[tuple[str, ...]] = None
  method_seeds: Optional[tuple[int, ...]] = None
  # The full run refuses a figure that cannot separate methods; the quick run
  # (20 steps: scores near 0 are expected) lists such figures instead.
  refuse_inseparable: bool = True

  @property
  def seeds_of_methods(self) -> tuple[int, ...]:
    return self.method_seeds or self.seeds

  def keeps(self, method: "Method") -> bool:
    return self.method_subset is None or method.name.startswith(self.method_subset)

  def pretrain_steps_of(self, size: str) -> int:
    return dict(self.pretrain_steps)[size]


FULL = Suite()
# Every stage once, on one task: what the test suite runs.
QUICK = Suite(sizes=("tiny",), pretrain_steps=(("tiny", 150),), steps=20, finetune_steps=20,
              lengths=(1, 10), eval_examples=32, scale_tasks=("research_sorted_bare",),
              length_task="research_sorted_bare", methods_task="research_sorted_bare",
              recycle_prompt_seeds=(0,), recycle_methods=("linear",),
              method_subset=("prompt tuning (", "ATTEMPT", "multi-task", "HyperPrompt", "ID-PT"),
              method_seeds=(0,), refuse_inseparable=False)


# Backbones.


def backbone(size: str, suite: Suite, cache_dir: Optional[str] = None, seed: int = 0) -> str:
  """The pretrained checkpoint folder of one size and seed (trained once, then cached)."""
  from prompt_tuning import quickstart
  cfg = quickstart.PretrainConfig(size=size, seed=seed, steps=suite.pretrain_steps_of(size),
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
  `rules` is "prompt" (the prompt modules train, parts they declare frozen
  stay frozen, the backbone is frozen) or "finetune" (everything trains);
  `optimizer` is "prompt" (the paper's Adafactor, constant 0.3), "finetune"
  (Adafactor at 1e-3, T5's fine-tuning setting) or "adam" (Adam at 3e-3, for
  trainable parts that are networks or per-layer vectors rather than input
  embeddings); `model_class` a T5 wrapper (ID-PT's `InputDependentT5`);
  `train_kwargs(backbone_path)` extra arguments of `loop.train` (wayward).
  """
  name: str
  prompt: Callable[[str, int], Any]
  rules: str = "prompt"
  optimizer: str = "prompt"
  model_class: Optional[Callable[..., Any]] = None
  train_kwargs: Optional[Callable[[str], dict[str, Any]]] = None


@functools.lru_cache(maxsize=None)
def _optimizer(kind: str):
  """One optimizer object per kind, so runs of one structure share a train step."""
  import optax
  from prompt_tuning.train import optimizers
  if kind == "finetune":
    return optax.adafactor(1e-3)
  if kind == "adam":
    return optax.adam(3e-3)
  return optimizers.prompt_tuning_adafactor()


def _rules(kind: str):
  from prompt_tuning.train import freezing
  # None: the spec's own rules (prompt modules train, their declared frozen parts do not).
  return {"prompt": None, "finetune": freezing.FULL_FINETUNING_RULES}[kind]


@functools.lru_cache(maxsize=None)
def _validation(task: str, num: int) -> tuple:
  """A task's first `num` validation examples, read once per process."""
  from prompt_tuning.runtime import data as data_lib
  from prompt_tuning.tasks import synthetic
  return tuple(data_lib.eval_examples(task, "validation", synthetic.FEATURE_LENGTHS, num))


def _score_one(model, params, task: str, num: int, ensemble: int = 0) -> float:
  from prompt_tuning import decoding, evaluation
  from prompt_tuning.runtime import data as data_lib
  from prompt_tuning.tasks import research, synthetic
  task_obj = data_lib.get_task_or_mixture(task)
  examples = list(_validation(task, num))
  labels = research.CLASS_LABELS if task in research.CLASSIFICATION else None
  preds = evaluation.predict(model, params, examples,
                             task_obj.output_features["targets"].vocabulary,
                             synthetic.FEATURE_LENGTHS["inputs"], 64,
                             decoding.DecodingConfig(max_decode_length=8),
                             class_labels=labels, ensemble_prompts=ensemble,
                             ensemble_method="majority_vote")
  return float(evaluation.compute_metrics(task_obj, examples,
                                          [p for p, _ in preds])["exact_match"])


def score_of(model, params, task: str, num: int, ensemble: int = 0) -> float:
  """Exact match (generation) or rank-classification accuracy (%) on validation.

  A mixture scores the mean of its tasks, `num // tasks` examples each.
  """
  import seqio
  if task in seqio.MixtureRegistry.names():
    members = [t.name for t in seqio.get_mixture_or_task(task).tasks]
    return float(np.mean([_score_one(model, params, t, max(num // len(members), 1), ensemble)
                          for t in members]))
  return _score_one(model, params, task, num, ensemble)


def run_dir_of(work_dir: str, method: str, task: str, size: str, seed: int, steps: int,
               backbone_seed: int = 0) -> str:
  """The folder of one run (its checkpoint, result.json and, for prompts, prompt.npy)."""
  slug = "".join(c if c.isalnum() else "_" for c in method)
  where = size if backbone_seed == 0 else f"{size}_b{backbone_seed}"
  return os.path.join(work_dir, "runs", f"{task}__{where}__{slug}__seed{seed}__{steps}")


def prompt_file_of(work_dir: str, result: dict[str, Any]) -> str:
  """The prompt.npy a prompt-tuning run (given by its result row) exported."""
  return os.path.join(run_dir_of(work_dir, result["method"], result["task"], result["size"],
                                 result["seed"], result["steps"],
                                 result.get("backbone_seed", 0)), "prompt.npy")


# What `run` did during one suite run: trained now, or found in its run folder.
_RUN_COUNTS = {"trained": 0, "cached": 0}


def run(method: Method, task: str, size: str, seed: int, suite: Suite, work_dir: str,
        steps: Optional[int] = None, backbone_seed: int = 0) -> dict[str, Any]:
  """Trains and scores one (method, task, size, seed); cached in its run folder."""
  from prompt_tuning import quickstart
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import DataSpec, ModelSpec
  from prompt_tuning.tasks import synthetic
  from prompt_tuning.train import freezing, loop
  steps = steps or (suite.finetune_steps if method.rules == "finetune" else suite.steps)
  run_dir = run_dir_of(work_dir, method.name, task, size, seed, steps, backbone_seed)
  result_file = os.path.join(run_dir, "result.json")
  if os.path.exists(result_file):
    _RUN_COUNTS["cached"] += 1
    with open(result_file) as f:
      return json.load(f)
  _RUN_COUNTS["trained"] += 1
  path = backbone(size, suite, seed=backbone_seed)
  spec = ModelSpec(quickstart.backbone_config(size), path, method.prompt(path, seed),
                   trainable_rules=_rules(method.rules), model_class=method.model_class)
  extra = method.train_kwargs(path) if method.train_kwargs else {}
  start = time.time()
  summary = loop.train(model_dir=run_dir, model=spec,
                       data=DataSpec(task, synthetic.FEATURE_LENGTHS, suite.batch_size,
                                     seed=seed),
                       train_steps=steps, optimizer=_optimizer(method.optimizer), seed=seed,
                       checkpoint_period=steps, keep_checkpoints=1,
                       log_period=max(steps // 4, 1), progress=False, **extra)
  seconds = time.time() - start
  # A preempted run is resumed by the next suite run, never scored half-trained.
  quickstart.require_finished(summary, steps, run_dir, f"{method.name} on {task}")
  setup = setup_lib.build(spec, init_trainable=False)  # restored below
  store = checkpoints_lib.CheckpointStore(run_dir)
  trained = store.restore_trainable(setup.abstract.trainable)
  store.close()
  result = dict(method=method.name, task=task, size=size, seed=seed, steps=steps,
                backbone_seed=backbone_seed,
                score=score_of(setup.model, freezing.merge(trained, setup.frozen), task,
                               suite.eval_examples),
                trainable_parameters=count_parameters(trained),
                train_seconds=round(seconds, 1))
  if method.rules == "prompt":
    prompt = trained.get("encoder_prompt", {}).get("prompt")
    if prompt is not None and getattr(prompt, "ndim", 0) == 2:
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
      return soft.SoftPrompt(length, init=_seeded_sampled(path, length, seed))
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


def _fixed_prompt(name: str, value_PH: Callable[[], np.ndarray]) -> Method:
  """Prompt tuning started from a given [P, H] array (SPoT's transferred prompt)."""
  def build(path: str, seed: int):
    from prompt_tuning.prompts import initializers, soft
    value = value_PH()
    return soft.SoftPrompt(value.shape[0], init=initializers.from_array(value))
  return Method(name, build)


def single_task_methods(suite: Suite, sources: Sequence[str]) -> list[Method]:
  """The library's single-task methods beside plain prompt tuning (issue 17's rows).

  `sources`: ATTEMPT's source prompt files ([P, H] each).
  """
  from prompt_tuning.prompts import attempt, deep, ia3, per_layer
  from prompt_tuning.train import wayward
  p = suite.prompt_length

  def sampled(path: str, seed: int):
    return soft_prompt(p)(path, seed)
  return [
      # Li & Liang 2021 / deep prompt tuning: key/value prefixes in every
      # attention, plain (no reparameterization) and with the MLP.
      Method(f"deep prompts ({p} per layer)",
             lambda path, seed: deep.DeepPrompt(length=p), optimizer="adam"),
      Method(f"prefix tuning (MLP-reparameterized, {p} per layer)",
             lambda path, seed: deep.DeepPrompt(length=p, reparameterize=True,
                                                reparam_hidden=64), optimizer="adam"),
      # Liu et al. 2022 (T-Few): rescaling vectors, initialized to ones.
      Method("IA3", lambda path, seed: ia3.IA3(), optimizer="adam"),
      Method(f"prompt tuning + IA3 ({p} tokens)",
             lambda path, seed: per_layer.CombinedPrompt(prompt=sampled(path, seed),
                                                         per_layer=(ia3.IA3(),))),
      # Khashabi et al. 2022: the prompt stays near a discrete one (gamma 0.01,
      # the seed library's default); the text is the pretraining instruction
      # of the composition's last skill.
      Method(f"wayward prompt tuning ({p} tokens, 'reverse: ')", sampled,
             train_kwargs=lambda path: dict(wayward=wayward.Wayward(text="reverse: "))),
      # Asai et al. 2022: the paper's temperature d * e, bottleneck and
      # sampled-vocabulary target prompt.
      Method(f"ATTEMPT ({len(sources)} source prompts)",
             lambda path, seed: attempt.AttemptPrompt(
                 tuple(sources), embeddings=path, first_n=259,
                 init=_seeded_sampled(path, p, seed))),
  ]


def _seeded_sampled(path: str, length: int, seed: int):
  """Sampled-vocabulary init with the run's seed; rows 3..258 are the byte
  vocabulary's real tokens (0-2: pad, EOS, UNK)."""
  from prompt_tuning.prompts import initializers
  return initializers.sampled_vocab(path, length, first_n=259, seed=seed)


def multi_task_methods(suite: Suite, num_tasks: int, width: int,
                       hyper_parameters: int) -> list[Method]:
  """Methods for a mixture: task-aware (a task index) and input-dependent (none).

  The multi-task prompt's length is chosen so that its trainable parameters
  ((T + 1) x P x H: a shared prompt plus one per task) match HyperPrompt's
  (He et al. 2022 compare at equal parameters).
  """
  from prompt_tuning.prompts import input_dependent, multi_task
  mt_length = max(1, round(hyper_parameters / ((num_tasks + 1) * width)))
  p = suite.prompt_length
  return [
      prompt_tuning(suite),
      Method(f"multi-task prompt (shared + per task, {mt_length} tokens)",
             lambda path, seed: multi_task.MultiTaskPrompt(
                 mt_length, num_tasks, mode="add",
                 init=_seeded_sampled(path, mt_length, seed))),
      Method("HyperPrompt-Global (encoder + decoder, 8 per layer)",
             lambda path, seed: hyperprompt(num_tasks), optimizer="adam"),
      # Levine et al. 2022: queries over the frozen backbone's own reading of
      # the input; no task index.
      Method(f"ID-PT (frozen reading, {p} tokens)",
             lambda path, seed: input_dependent.FrozenReadingPrompt(
                 p, width=64, num_layers=2, num_heads=4, mlp_dim=128),
             optimizer="adam", model_class=input_dependent.InputDependentT5),
  ]


def hyperprompt(num_tasks: int):
  """HyperPrompt-Global sized for the tiny backbones: 8 positions per layer, local
  networks of width 4 and 8-dimensional task and layer embeddings (the
  hypernetworks grow with embedding_dim x width x bottleneck; at the module's
  defaults they would outnumber the tiny backbone's own weights)."""
  from prompt_tuning.prompts import hyper
  return hyper.HyperPrompt(num_tasks, length=8, bottleneck=4, task_dim=8, embedding_dim=8,
                           hidden_dim=16)


def hyper_parameter_count(size: str, num_tasks: int) -> int:
  """HyperPrompt-Global's trainable parameters on a backbone of `size`."""
  from prompt_tuning import quickstart
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts import base
  cfg = quickstart.backbone_config(size)
  module = base.for_model(hyperprompt(num_tasks), cfg)
  abstract = params_lib.abstract_params(T5(cfg, encoder_prompt=module))[0]
  return count_parameters(abstract["encoder_prompt"])


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
      prompts = np.stack([np.load(prompt_file_of(work_dir, r)) for r in members])
      path = backbone(size, suite)
      spec = ModelSpec(quickstart.backbone_config(size), path, multi_task.PromptBank(
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
  return _fixed_prompt(f"SPoT (probe {probe_steps} steps, best source)", lambda: value)


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
  from prompt_tuning import quickstart
  size, task = suite.sizes[0], suite.multitask_task
  num_tasks = len(seqio.get_mixture_or_task(task).tasks)
  width = quickstart.backbone_config(size).emb_dim
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
  from prompt_tuning import quickstart
  from prompt_tuning.recycling import methods as recycling
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import ModelSpec
  from prompt_tuning.train import freezing
  task = suite.recycle_task
  method = prompt_tuning(suite)
  models = [(size, bseed) for size in suite.sizes for bseed in suite.backbone_seeds]
  name_of = lambda m: f"{m[0]}_seed{m[1]}"  # noqa: E731
  path_of = {m: backbone(m[0], suite, seed=m[1]) for m in models}

  def score(model, prompt_module) -> float:
    spec = ModelSpec(quickstart.backbone_config(model[0]), path_of[model], prompt_module)
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
    return setup_lib.build(ModelSpec(quickstart.backbone_config(tgt[0]), path_of[tgt],
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


# Claims.


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


def _pm(group: dict[str, Any]) -> str:
  """An aggregated group as "mean +- sd"."""
  return f"{group['mean']:.1f} +- {group['std']:.1f}"


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
    out.append(dict(claim=f"Lester 2021: the fine-tuning minus prompt-tuning gap shrinks with "
                          f"size ({task})",
                    verdict=gap_verdict(gaps), numbers=f"gap in points by size: {text}"))
  init = {r["method"]: r for r in _aggregate(results["init"], "method")}
  rand = next(v for k, v in init.items() if "random_uniform" in k)
  for kind in ("sampled_vocab", "class_labels"):
    other = next(v for k, v in init.items() if kind in k)
    out.append(dict(claim=f"Lester 2021: {kind.replace('_', ' ')} init beats random "
                          f"({suite.init_task}, {suite.sizes[0]})",
                    verdict=_verdict(other["mean"] > rand["mean"]),
                    numbers=f"{_pm(other)} vs random {_pm(rand)}"))
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
  methods = {r["method"]: r for r in _aggregate(results["methods"], "method")}
  attempt_row = next(v for k, v in methods.items() if k.startswith("ATTEMPT"))
  pt_row = methods[pt]
  out.append(dict(claim=f"Asai 2022: ATTEMPT with good source prompts beats prompt tuning from "
                        f"scratch at equal steps ({suite.methods_task}, {suite.sizes[0]})",
                  verdict=_verdict(attempt_row["mean"] > pt_row["mean"]),
                  numbers=f"{_pm(attempt_row)} vs {_pm(pt_row)}"))
  multi = {r["method"]: r for r in _aggregate(results["multitask"], "method")}
  hp = next(v for k, v in multi.items() if k.startswith("HyperPrompt"))
  mtpt = next(v for k, v in multi.items() if k.startswith("multi-task prompt"))
  idpt = next(v for k, v in multi.items() if k.startswith("ID-PT"))
  static = multi[pt]
  out.append(dict(claim=f"He 2022: HyperPrompt beats multi-task prompt tuning at equal "
                        f"trainable parameters ({suite.multitask_task}, {suite.sizes[0]})",
                  verdict=_verdict(hp["mean"] > mtpt["mean"]),
                  numbers=f"{_pm(hp)} ({hp['trainable_parameters']:,} parameters) vs "
                          f"{_pm(mtpt)} ({mtpt['trainable_parameters']:,})"))
  out.append(dict(claim=f"Levine 2022: ID-PT beats one static prompt on the multi-task "
                        f"mixture ({suite.multitask_task}, {suite.sizes[0]})",
                  verdict=_verdict(idpt["mean"] > static["mean"]),
                  numbers=f"{_pm(idpt)} vs {_pm(static)}"))
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


# Writing.


def _runs_note(results: dict[str, Any]) -> str:
  """How much of the run was done now: runs are cached, so a rerun may train few."""
  runs = results.get("runs")
  if not runs:
    return ""
  return (f" ({runs['trained']} runs trained now, {runs['cached']} found in the run cache; "
          f"the tables' runs took {runs['train_minutes']:.1f} min of training when they ran)")


def write(results: dict[str, Any], suite: Suite, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "research.json"), "w") as f:
    json.dump(results, f, indent=1)
  info = results["machine"]
  lines = ["# Research suite: the papers' claims on the synthetic family", "",
           f"Written by `python -m benchmarks.research{' --quick' if results['quick'] else ''}` "
           f"in {results['seconds'] / 60:.1f} min{_runs_note(results)} on "
           f"{describe_cpu(info)} (AVX2: "
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
  for r in _aggregate(results["scale"], "task", "size", "method"):
    lines.append(f"| {r['task']} | {r['size']} | {r['method']} | {_pm(r)} | "
                 f"{r['trainable_parameters']:,} |")
  lines += ["", "## Initialization", "", "| method | score |", "| --- | --- |"]
  for r in _aggregate(results["init"], "method"):
    lines.append(f"| {r['method']} | {_pm(r)} |")
  lines += ["", "## Prompt length", "", "| length | score | trainable parameters |",
            "| --- | --- | --- |"]
  for r in sorted(_aggregate(results["length"], "length"), key=lambda r: r["length"]):
    lines.append(f"| {r['length']} | {_pm(r)} | "
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
  for r in sorted(_aggregate(results["methods"], "method"), key=lambda r: -r["mean"]):
    lines.append(f"| {r['method']} | {_pm(r)} | "
                 f"{r['trainable_parameters']:,} | {np.median(seconds[r['method']]):.0f} |")
  lines += ["", f"## Multi-task mixture ({suite.multitask_task}, {suite.sizes[0]}, "
            f"{suite.steps} steps)", "",
            "Mean exact match over the mixture's formats. Task-aware methods read each "
            "example's task index; ID-PT and the static prompt do not.", "",
            "| method | score | trainable parameters | train seconds |",
            "| --- | --- | --- | --- |"]
  for r in sorted(_aggregate(results["multitask"], "method"), key=lambda r: -r["mean"]):
    lines.append(f"| {r['method']} | {_pm(r)} | "
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
  with open(os.path.join(out_dir, "research.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot(results, suite, out_dir)


def plot(results: dict[str, Any], suite: Suite, out_dir: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter
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
  # One labelled tick per backbone size, none in between (they overlapped).
  sizes = sorted(backbone_params.items(), key=lambda kv: kv[1])
  axes[0].set_xticks([v for _, v in sizes], [f"{k}\n{v / 1e6:.2f}M" for k, v in sizes])
  axes[0].xaxis.set_minor_formatter(NullFormatter())
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
    for r in _aggregate(results[key], "method"):
      axes[1].errorbar(r["trainable_parameters"], r["mean"], r["std"], marker=marker,
                       capsize=3, ls="none")
      axes[1].annotate(r["method"].split(" (")[0], (r["trainable_parameters"], r["mean"]),
                       fontsize=6, xytext=(3, 3), textcoords="offset points")
  axes[1].set_xscale("log")
  axes[1].set(xlabel="trainable parameters", ylabel="score (%)",
              title=f"Methods (circles: {suite.methods_task}; squares: {suite.multitask_task})")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "research_recycling_and_methods.png"), dpi=110)
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
  _RUN_COUNTS.update(trained=0, cached=0)
  backbones = [(size, seed) for seed in suite.backbone_seeds for size in suite.sizes]
  n_single = 2 + 6  # prompt tuning, fine-tuning, single_task_methods
  n_models = len(backbones)
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
                             "machine": cpu_info()}
  results["backbone_parameters"] = {
      size: count_parameters(params_lib.abstract_params(T5(quickstart.backbone_config(size)))[0])
      for size in suite.sizes}
  for name, fn in (("init", experiment_init), ("length", experiment_length),
                   ("methods", experiment_methods), ("multitask", experiment_multitask),
                   ("scale", experiment_scale)):
    bar.set_postfix_str(name)
    results[name] = fn(suite, work_dir, step)
    inseparable += check_separates(results[name], name, suite.refuse_inseparable)
  bar.set_postfix_str("ensemble")
  results["ensemble"] = experiment_ensemble(suite, work_dir, step, results["scale"])
  bar.set_postfix_str("recycling")
  results["recycling"] = experiment_recycling(suite, work_dir, step)
  inseparable += check_separates(
      [dict(task=f"{suite.recycle_task}, recycled", size=r["target"], score=r["recycled"])
       for r in results["recycling"]["rows"]], "recycling", suite.refuse_inseparable)
  results["inseparable"] = inseparable
  bar.close()
  results["claims"] = claims(results, suite)
  results["seconds"] = time.time() - start
  results["runs"] = dict(_RUN_COUNTS, train_minutes=round(sum(
      r["train_seconds"] for k in ("scale", "init", "length", "methods", "multitask")
      for r in results[k]) / 60, 1))
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
