"""Evaluation and inference with a trained prompt (the `eval` and `infer` binaries).

Predictions come from decoding (greedy / beam / sampling) or, for
classification tasks, from rank classification over CLASS_LABELS: every label
is scored as a target and the best one is the prediction. Predictions and
targets go through the task's postprocessor, then its metric functions.
A PromptBank of N prompts for one task can be evaluated as an ensemble
(Lester et al. 2021, section 7): every batch runs once per prompt, then the
predictions are combined by majority vote (the paper's) or mean
log-probability.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Optional

import jax

from prompt_tuning import registry
from prompt_tuning.prompts import provenance
from prompt_tuning.runtime import best_prompts
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.runtime import data as data_lib
from prompt_tuning.runtime import freezing
from prompt_tuning import layout
from prompt_tuning.runtime import metrics as metrics_lib
from prompt_tuning.runtime import partitioning
from prompt_tuning.runtime import preflight
from prompt_tuning.runtime.predictions import (  # noqa: F401  (the public names stay here too)
    decoding_record,
    compiled_functions, compute_metrics, ensemble_features, ensemble_rank, ensemble_scores,
    ensemble_vote, predict, uses_scores, _text)
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime import specs as specs_lib
from prompt_tuning.runtime import validation


log = logging.getLogger(__name__)


def load_for_inference(model_dir: Optional[str], model: specs_lib.ModelSpec,
                       inference: specs_lib.InferenceSpec = specs_lib.InferenceSpec(),
                       partitioning_config: partitioning.PartitioningConfig = (
                           partitioning.PartitioningConfig()),
                       vocabulary: Optional[Any] = None
                       ) -> tuple[model_setup.Setup, Any, int]:
  """(setup, full params, step): prompts from MODEL_DIR's checkpoint, or as initialized.

  Restoring (`inference.restore`), the prompt modules' initializers never
  run: the trainable part stays abstract until the checkpoint of
  `inference.checkpoint_step` (None: the latest; 'best': the prompt files
  of MODEL_DIR/best/, kept by training with EVAL_PERIOD) fills it. With
  `restore=False` (e.g. PROMPT_FILE with the from-file initializer) the
  trainable parameters are exactly what the initializers give (those that
  embed text tokenize with `vocabulary`, the task's input one).
  """
  setup = model_setup.build(model, partitioning_config, require_trainable=False,
                            init_trainable=not inference.restore, vocabulary=vocabulary)
  trainable, step = setup.trainable, 0
  if inference.restore and jax.tree.leaves(trainable):
    if not model_dir:
      raise ValueError("Restoring a checkpoint needs MODEL_DIR")
    if inference.checkpoint_step == "best":  # The exported prompts; no checkpoint needed.
      trainable, step = best_prompts.load_trainable(model_dir, setup.abstract.trainable)
      return setup, freezing.merge(trainable, setup.frozen), step
    store = checkpoints_lib.CheckpointStore(model_dir)
    try:
      step = (inference.checkpoint_step if inference.checkpoint_step is not None
              else store.latest_step())
      if step is None:
        raise FileNotFoundError(f"No checkpoint under {store.directory}; train first, or pass "
                                "a prompt file with RESTORE_CHECKPOINT=False")
      trainable = store.restore_trainable(setup.abstract.trainable, step)
    finally:
      store.close()
  return setup, freezing.merge(trainable, setup.frozen), int(step)


def _predict_split(*, model_dir: str, model: specs_lib.ModelSpec, data: specs_lib.DataSpec,
                   inference: specs_lib.InferenceSpec,
                   partitioning_config: partitioning.PartitioningConfig):
  """(task, examples, [(prediction, score)], step) for eval and infer alike."""
  validation.check_inference(  # Before the backbone is read.
      batch_size=data.batch_size, task_feature_lengths=data.feature_lengths,
      inference=inference)
  validation.check_model_spec(model)  # Both prompts and the checkpoint path.
  task = data_lib.get_task_or_mixture(data.task)
  data_lib.check_vocabulary(task, model.config.vocab_size)
  if model.decoder_prompt is not None and inference.decoding.use_cache:
    # The KV cache holds no decoder prompt: decode without it (slower, same result).
    inference = inference.replace(
        decoding=dataclasses.replace(inference.decoding, use_cache=False))
  preflight.check_inference(  # Backbone files, MODEL_DIR's shapes, memory.
      model_dir=model_dir, model=model, data=data, inference=inference,
      partitioning_config=partitioning_config)
  setup, params, step = load_for_inference(model_dir, model, inference, partitioning_config,
                                           data_lib.input_vocabulary(task))
  examples = data_lib.eval_examples(data.task, data.split, data.feature_lengths,
                                    inference.max_examples)
  vocab = task.output_features["targets"].vocabulary
  target_length = data.feature_lengths.get("targets") if (
      uses_scores(task) and not inference.class_labels) else None
  preds = predict(setup.model, params, examples, vocab, data.feature_lengths["inputs"],
                  data.batch_size, inference, target_length=target_length)
  return task, examples, preds, step


@registry.configurable
def evaluate(*, model_dir: str, model: specs_lib.ModelSpec, data: specs_lib.DataSpec,
             inference: specs_lib.InferenceSpec = specs_lib.InferenceSpec(),
             output_name: str = "eval",
             partitioning_config: partitioning.PartitioningConfig = (
                 partitioning.PartitioningConfig())) -> dict[str, Any]:
  """Metrics of `data.split`; appended to MODEL_DIR/<output_name>/metrics.jsonl and TensorBoard.

  Args:
    model, data: what is evaluated, on what (the same specs as training).
    inference: the checkpoint step to restore (default: the latest), or none
      (`restore=False` evaluates the prompts as their initializers give them:
      a prompt file, or no prompt); decoding, or rank classification over
      class labels; how many examples; a PromptBank as an ensemble (Lester et
      al. 2021, section 7; ties in `ensemble_rank`).
    output_name: the folder under MODEL_DIR the metrics go to.
  """
  task, examples, preds, step = _predict_split(
      model_dir=model_dir, model=model, data=data, inference=inference,
      partitioning_config=partitioning_config)
  metrics = compute_metrics(task, examples, [p for p, _ in preds],
                            scores=[s for _, s in preds])
  metrics["num_examples"] = len(examples)
  how = decoding_record(inference)
  metrics_lib.MetricsWriter(model_dir, output_name).write(step, metrics, task=data.task,
                                                          split=data.split, **how)
  if inference.restore and jax.process_index() == 0:  # One entry per split and method.
    record_metrics(model_dir, step, f"{data.task}/{data.split}/{how['decoding']}", metrics)
  log.info("%s %s step %d: %s", data.task, data.split, step, metrics)
  return dict(step=step, **metrics)


def record_metrics(model_dir: str, step: int, name: str, metrics: Mapping[str, float]
                   ) -> list[str]:
  """Adds eval metrics to the provenance sidecars of the prompts exported at `step`."""
  folder = layout.prompts_dir(model_dir, step)
  files = sorted(f for f in os.listdir(folder) if f.endswith(".npy")) if os.path.isdir(
      folder) else []
  return [os.path.join(folder, f) for f in files
          if provenance.add_metrics(os.path.join(folder, f), name, metrics)]


@registry.configurable
def infer(*, model_dir: str, model: specs_lib.ModelSpec, data: specs_lib.DataSpec,
          inference: specs_lib.InferenceSpec = specs_lib.InferenceSpec(),
          partitioning_config: partitioning.PartitioningConfig = (
              partitioning.PartitioningConfig())) -> str:
  """Writes JSON Lines of {input, target, prediction, score}; returns the file's path.

  The arguments are `evaluate`'s.
  """
  _, examples, preds, step = _predict_split(
      model_dir=model_dir, model=model, data=data, inference=inference,
      partitioning_config=partitioning_config)
  path = layout.infer_file(model_dir, data.task, data.split, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for ex, (pred, score) in zip(examples, preds):
      f.write(json.dumps(dict(input=_text(ex.get("inputs_pretokenized", "")),
                              target=_text(ex.get("targets_pretokenized", "")),
                              prediction=pred, score=score)) + "\n")
  os.replace(tmp, path)
  return path
