"""One run of the research suite: train a method on a task, score it on the
validation split; each run cached in its own folder."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Optional

import numpy as np

from benchmarks.research.config import Suite


def backbone(size: str, suite: Suite, cache_dir: Optional[str] = None, seed: int = 0) -> str:
  """The pretrained checkpoint folder of one size and seed (trained once, then cached)."""
  from prompt_tuning import backbones
  cfg = backbones.PretrainConfig(size=size, seed=seed, steps=suite.pretrain_steps_of(size),
                                  mixture="research_pretrain")
  return backbones.pretrain(cfg, cache_dir, progress=False)


def count_parameters(tree: Any) -> int:
  """How many numbers a pytree holds."""
  import jax
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


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
  from prompt_tuning.runtime import freezing
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
  from prompt_tuning.runtime.specs import InferenceSpec
  from prompt_tuning.tasks import research, synthetic
  task_obj = data_lib.get_task_or_mixture(task)
  examples = list(_validation(task, num))
  labels = research.CLASS_LABELS if task in research.CLASSIFICATION else None
  preds = evaluation.predict(model, params, examples,
                             task_obj.output_features["targets"].vocabulary,
                             synthetic.FEATURE_LENGTHS["inputs"], 64,
                             InferenceSpec(decoding=decoding.DecodingConfig(max_decode_length=8),
                                           class_labels=labels, ensemble_prompts=ensemble,
                                           ensemble_method="majority_vote"))
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
RUN_COUNTS = {"trained": 0, "cached": 0}


def run(method: Method, task: str, size: str, seed: int, suite: Suite, work_dir: str,
        steps: Optional[int] = None, backbone_seed: int = 0) -> dict[str, Any]:
  """Trains and scores one (method, task, size, seed); cached in its run folder."""
  from prompt_tuning import backbones
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, ModelSpec
  from prompt_tuning.tasks import synthetic
  from prompt_tuning.runtime import freezing
  from prompt_tuning.train import loop
  from prompt_tuning.train.specs import ReportSpec
  steps = steps or (suite.finetune_steps if method.rules == "finetune" else suite.steps)
  run_dir = run_dir_of(work_dir, method.name, task, size, seed, steps, backbone_seed)
  result_file = os.path.join(run_dir, "result.json")
  if os.path.exists(result_file):
    RUN_COUNTS["cached"] += 1
    with open(result_file) as f:
      return json.load(f)
  RUN_COUNTS["trained"] += 1
  path = backbone(size, suite, seed=backbone_seed)
  spec = ModelSpec(backbones.backbone_config(size), path, method.prompt(path, seed),
                   trainable_rules=_rules(method.rules), model_class=method.model_class)
  extra = method.train_kwargs(path) if method.train_kwargs else {}
  start = time.time()
  summary = loop.train(model_dir=run_dir, model=spec,
                       data=DataSpec(task, synthetic.FEATURE_LENGTHS, suite.batch_size,
                                     seed=seed),
                       train_steps=steps, optimizer=_optimizer(method.optimizer), seed=seed,
                       checkpoint=CheckpointSpec(period=steps, keep=1),
                       report=ReportSpec(log_period=max(steps // 4, 1), progress=False), **extra)
  seconds = time.time() - start
  # A preempted run is resumed by the next suite run, never scored half-trained.
  backbones.require_finished(summary, steps, run_dir, f"{method.name} on {task}")
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

