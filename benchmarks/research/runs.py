"""One run of the research suite: train a method on a task, select its checkpoint
by the validation split, score the selected one on the held-out test split;
each run cached in a folder keyed by every setting that changes its result."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from benchmarks.research.config import Suite
from benchmarks.research.family import Backbone, fingerprint

# Part of every run's cache key: bump it when what a run computes changes.
RUN_VERSION = 2


def backbone(size: str, suite: Suite, cache_dir: Optional[str] = None, seed: int = 0) -> str:
  """The pretrained byte-family checkpoint folder of one size and seed (trained once, then cached)."""
  from prompt_tuning import backbones
  cfg = backbones.PretrainConfig(size=size, seed=seed, steps=suite.pretrain_steps_of(size),
                                  mixture="research_pretrain")
  return backbones.pretrain(cfg, cache_dir, progress=False)


def byte_backbone(size: str, suite: Suite, seed: int = 0) -> Backbone:
  """The byte-family `Backbone` of one size and pretraining seed."""
  import seqio
  from prompt_tuning import backbones
  return Backbone(size, backbone(size, suite, seed=seed), backbones.backbone_config(size),
                  seqio.ByteVocabulary(), seed)


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
  embeddings); `learning_rate` replaces the optimizer's rate (a sweep);
  `model_class` a T5 wrapper (ID-PT's `InputDependentT5`);
  `train_kwargs(backbone_path)` extra arguments of `loop.train` (wayward);
  `settings`: whatever else changes the result that `name` does not say
  (source prompts' hashes, ...), part of the run's cache key.
  """
  name: str
  prompt: Callable[[str, int], Any]
  rules: str = "prompt"
  optimizer: str = "prompt"
  model_class: Optional[Callable[..., Any]] = None
  train_kwargs: Optional[Callable[[str], dict[str, Any]]] = None
  learning_rate: Optional[float] = None
  settings: tuple = ()

  def with_rate(self, rate: float) -> "Method":
    return dataclasses.replace(self, learning_rate=rate)


DEFAULT_RATES = {"prompt": 0.3, "finetune": 1e-3, "adam": 3e-3}


@functools.lru_cache(maxsize=None)
def _optimizer(kind: str, rate: Optional[float] = None):
  """One optimizer object per (kind, rate), so runs of one structure share a train step."""
  import optax
  from prompt_tuning.train import optimizers
  rate = DEFAULT_RATES[kind] if rate is None else rate
  if kind == "finetune":
    return optax.adafactor(rate)
  if kind == "adam":
    return optax.adam(rate)
  return optimizers.prompt_tuning_adafactor(rate)


def _rules(kind: str):
  from prompt_tuning.runtime import freezing
  # None: the spec's own rules (prompt modules train, their declared frozen parts do not).
  return {"prompt": None, "finetune": freezing.FULL_FINETUNING_RULES}[kind]


def feature_lengths_of(feature_lengths: Optional[Mapping[str, int]]) -> dict[str, int]:
  from prompt_tuning.tasks import synthetic
  return dict(feature_lengths or synthetic.FEATURE_LENGTHS)


@functools.lru_cache(maxsize=None)
def _examples(task: str, split: str, num: int, lengths: tuple) -> tuple:
  """A task's first `num` examples of a split, read once per process."""
  from prompt_tuning.runtime import data as data_lib
  return tuple(data_lib.eval_examples(task, split, dict(lengths), num))


def labels_of(task: str, class_labels: Optional[Mapping[str, Sequence[str]]] = None):
  """A task's rank-classification labels (None: decode)."""
  from prompt_tuning.tasks import research
  if class_labels is not None:
    return tuple(class_labels[task]) if task in class_labels else None
  return research.CLASS_LABELS if task in research.CLASSIFICATION else None


def _score_one(model, params, task: str, split: str, num: int, ensemble: int,
               lengths: dict[str, int], labels) -> tuple[float, list[bool]]:
  from prompt_tuning import decoding, evaluation
  from prompt_tuning.runtime import data as data_lib
  from prompt_tuning.runtime.specs import InferenceSpec
  task_obj = data_lib.get_task_or_mixture(task)
  examples = list(_examples(task, split, num, tuple(sorted(lengths.items()))))
  preds = evaluation.predict(model, params, examples,
                             task_obj.output_features["targets"].vocabulary,
                             lengths["inputs"], 64,
                             InferenceSpec(decoding=decoding.DecodingConfig(
                                 max_decode_length=lengths["targets"]),
                                           class_labels=labels, ensemble_prompts=ensemble,
                                           ensemble_method="majority_vote"))
  texts = [p for p, _ in preds]
  correct = [evaluation.compute_metrics(task_obj, [ex], [p])["exact_match"] >= 100.0 - 1e-9
             for ex, p in zip(examples, texts)]
  return float(evaluation.compute_metrics(task_obj, examples, texts)["exact_match"]), correct


def score_detail(model, params, task: str, num: int, ensemble: int = 0, split: str = "validation",
                 feature_lengths: Optional[Mapping[str, int]] = None,
                 class_labels: Optional[Mapping[str, Sequence[str]]] = None
                 ) -> tuple[float, list[bool]]:
  """(exact match or rank-classification accuracy in %, per-example correctness) on a split.

  A mixture scores the mean of its tasks, `num // tasks` examples each; its
  per-example vector is theirs, concatenated.
  """
  import seqio
  lengths = feature_lengths_of(feature_lengths)
  if task in seqio.MixtureRegistry.names():
    members = [t.name for t in seqio.get_mixture_or_task(task).tasks]
    parts = [_score_one(model, params, t, split, max(num // len(members), 1), ensemble, lengths,
                        labels_of(t, class_labels)) for t in members]
    return float(np.mean([s for s, _ in parts])), [c for _, cs in parts for c in cs]
  return _score_one(model, params, task, split, num, ensemble, lengths,
                    labels_of(task, class_labels))


def score_of(model, params, task: str, num: int, ensemble: int = 0, split: str = "validation",
             **kwargs) -> float:
  """The score alone of `score_detail`."""
  return score_detail(model, params, task, num, ensemble, split, **kwargs)[0]


def run_settings(method: Method, task: str, bb: Backbone, seed: int, suite: Suite, steps: int,
                 feature_lengths: Optional[Mapping[str, int]] = None) -> dict[str, Any]:
  """Every setting that changes a run's result: its cache key is their hash."""
  return dict(version=RUN_VERSION, method=method.name, settings=[str(s) for s in method.settings],
              rules=method.rules, optimizer=method.optimizer,
              learning_rate=(DEFAULT_RATES[method.optimizer] if method.learning_rate is None
                             else method.learning_rate),
              model_class=getattr(method.model_class, "__name__", None), task=task,
              backbone=os.path.abspath(bb.path), backbone_hash=fingerprint(bb.path),
              size=bb.name, backbone_seed=bb.seed, seed=seed, steps=steps,
              batch_size=suite.batch_size,
              feature_lengths=sorted(feature_lengths_of(feature_lengths).items()),
              selection=dict(evaluations=suite.evaluations, validation=suite.eval_examples,
                             test=suite.test_examples))


def run_key(settings: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_dir_of(work_dir: str, settings: Mapping[str, Any]) -> str:
  """The folder of one run (its checkpoints, result.json and, for prompts, prompt.npy):
  a readable name, then the hash of every setting."""
  slug = "".join(c if c.isalnum() else "_" for c in settings["method"])[:60]
  return os.path.join(work_dir, "runs", f"{settings['task']}__{settings['size']}_b"
                      f"{settings['backbone_seed']}__{slug}__seed{settings['seed']}__"
                      f"{run_key(settings)}")


def prompt_file_of(work_dir: str, result: dict[str, Any]) -> str:
  """The prompt.npy (of the selected step) a prompt-tuning run, given by its result row, exported."""
  return os.path.join(result["run_dir"], "prompt.npy")


# What `run` did during one suite run: trained now, or found in its run folder.
RUN_COUNTS = {"trained": 0, "cached": 0}


def run(method: Method, task: str, bb: Backbone | str, seed: int, suite: Suite, work_dir: str,
        steps: Optional[int] = None, backbone_seed: int = 0,
        feature_lengths: Optional[Mapping[str, int]] = None,
        class_labels: Optional[Mapping[str, Sequence[str]]] = None) -> dict[str, Any]:
  """Trains one (method, task, backbone, seed), selects its checkpoint by validation and
  scores that one on the test split; cached in its run folder.

  `bb`: a family's `Backbone`, or a byte-family size name (with `backbone_seed`).
  Checkpoints are kept every `steps / suite.evaluations` steps; each is scored
  on `suite.eval_examples` validation examples, the best (earliest on a tie)
  is selected (as the paper's early stopping on the development set does),
  and only it is scored on the test split.
  """
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  from prompt_tuning.runtime import freezing
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, ModelSpec
  from prompt_tuning import backbones
  from prompt_tuning.train import loop
  from prompt_tuning.train.specs import ReportSpec
  if isinstance(bb, str):
    bb = byte_backbone(bb, suite, backbone_seed)
  steps = steps or (suite.finetune_steps if method.rules == "finetune" else suite.steps)
  lengths = feature_lengths_of(feature_lengths)
  settings = run_settings(method, task, bb, seed, suite, steps, lengths)
  run_dir = run_dir_of(work_dir, settings)
  result_file = os.path.join(run_dir, "result.json")
  if os.path.exists(result_file):
    RUN_COUNTS["cached"] += 1
    with open(result_file) as f:
      return {**json.load(f), "run_dir": run_dir}
  RUN_COUNTS["trained"] += 1
  spec = ModelSpec(bb.config, bb.path, method.prompt(bb.path, seed),
                   trainable_rules=_rules(method.rules), model_class=method.model_class)
  extra = method.train_kwargs(bb.path) if method.train_kwargs else {}
  period = max(steps // max(suite.evaluations, 1), 1)
  start = time.time()
  summary = loop.train(model_dir=run_dir, model=spec,
                       data=DataSpec(task, lengths, suite.batch_size, seed=seed),
                       train_steps=steps,
                       optimizer=_optimizer(method.optimizer, method.learning_rate), seed=seed,
                       checkpoint=CheckpointSpec(period=period, keep=None),
                       report=ReportSpec(log_period=period, progress=False), **extra)
  seconds = time.time() - start
  # A preempted run is resumed by the next suite run, never scored half-trained.
  backbones.require_finished(summary, steps, run_dir, f"{method.name} on {task}")
  setup = setup_lib.build(spec, init_trainable=False)  # restored below
  store = checkpoints_lib.CheckpointStore(run_dir)
  score = functools.partial(score_detail, setup.model, task=task, feature_lengths=lengths,
                            class_labels=class_labels)
  validation, trained_at = {}, {}
  for step in store.all_steps():
    trained_at[step] = store.restore_trainable(setup.abstract.trainable, step=step)
    validation[step] = score(freezing.merge(trained_at[step], setup.frozen),
                             num=suite.eval_examples)[0]
  store.close()
  selected = max(validation, key=lambda s: (validation[s], -s))
  trained = trained_at[selected]
  test, correct = score(freezing.merge(trained, setup.frozen), num=suite.test_examples,
                        split="test")
  result = dict(method=method.name, task=task, size=bb.name, seed=seed, steps=steps,
                backbone_seed=bb.seed, learning_rate=settings["learning_rate"],
                selected_step=int(selected),
                validation={str(k): v for k, v in sorted(validation.items())},
                validation_score=validation[selected], score=test, split="test",
                test_correct="".join("1" if c else "0" for c in correct),
                trainable_parameters=count_parameters(trained),
                train_seconds=round(seconds, 1), key=run_key(settings),
                # The last logging window's rate (compilation excluded): step cost.
                steps_per_sec=summary.get("last_metrics", {}).get("steps_per_sec"))
  if method.rules == "prompt":
    prompt = trained.get("encoder_prompt", {}).get("prompt")
    if prompt is not None and getattr(prompt, "ndim", 0) == 2:
      np.save(os.path.join(run_dir, "prompt.npy"), np.asarray(prompt))
  with open(result_file, "w") as f:
    json.dump(result, f)
  return {**result, "run_dir": run_dir}


def correct_vector(text: str) -> np.ndarray:
  """Per-example correctness written as "1"/"0" characters, as a bool vector."""
  return np.frombuffer(text.encode(), np.uint8) == ord("1")


def correct_of(result: Mapping[str, Any]) -> np.ndarray:
  """A run's per-example test correctness as a bool vector."""
  return correct_vector(result["test_correct"])
