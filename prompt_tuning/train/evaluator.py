"""Evaluation during training, as T5X's train binary does it every `eval_period` steps.

Two evaluations of the in-memory parameters, on a held-out split:

- train_eval: the teacher-forced loss and token accuracy over EVAL_STEPS
  batches of the split (T5X's `train_eval`), the same batches every time;
- infer_eval: the task's postprocessors and metrics over up to
  MAX_EVAL_EXAMPLES examples, by decoding or rank classification, computed by
  `runtime.predictions` exactly as `prompt-tuning eval` computes them.

Each goes to MODEL_DIR/train_eval/ and MODEL_DIR/infer_eval/ (metrics.jsonl
and TensorBoard). The teacher-forced program is jitted once per run, and the
inference programs come from `predictions.compiled_functions`, shared by
every call on the same model: neither compiles again at later evaluations.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterator, Optional

import jax

from prompt_tuning.runtime import data as data_lib
from prompt_tuning.runtime import faults
from prompt_tuning.runtime import freezing
from prompt_tuning.runtime import metrics as metrics_lib
from prompt_tuning.runtime import partitioning
from prompt_tuning.runtime import predictions
from prompt_tuning.runtime import specs as specs_lib
from prompt_tuning.train import specs as train_specs
from prompt_tuning.train import step as step_lib

log = logging.getLogger(__name__)


class Evaluator:
  """`evaluator(step, trainable, frozen) -> {'train_eval': ..., 'infer_eval': ...}`."""

  def __init__(self, spec: train_specs.EvalSpec, *, model_dir: str, task: Any,
               data: specs_lib.DataSpec, model: Any, objective: step_lib.Objective,
               z_loss: float, mesh: Any, trainable_shardings: Any, frozen_shardings: Any,
               batches: Callable[[specs_lib.DataSpec], Iterator[dict]], is_chief: bool):
    self.spec, self.task, self.data, self.model, self.mesh = spec, task, data, model, mesh
    eval_data = data.replace(split=spec.split)
    # Read once: every evaluation sees the same batches and examples.
    self.batches = list(itertools.islice(batches(eval_data), spec.steps))
    self.examples = data_lib.eval_examples(data.task, spec.split, data.feature_lengths,
                                           spec.max_examples)
    self.eval_step = jax.jit(
        step_lib.make_eval_step(model, z_loss, objective),
        in_shardings=(trainable_shardings, frozen_shardings, partitioning.batch_sharding(mesh)),
        out_shardings=partitioning.replicated(mesh))
    self.inference = spec.inference
    self.target_length = data.feature_lengths.get("targets") if (
        predictions.uses_scores(task) and not self.inference.class_labels) else None
    self.writers = ({name: metrics_lib.MetricsWriter(model_dir, name)
                     for name in ("train_eval", "infer_eval")} if is_chief else {})

  def due(self, step: int, train_steps: int) -> bool:
    period = self.spec.period
    return bool(period) and (step % period == 0 or step == train_steps)

  def __call__(self, step: int, trainable: Any, frozen: Any,
               partitioning_config: Optional[partitioning.PartitioningConfig] = None
               ) -> dict[str, dict[str, float]]:
    out = dict(train_eval=self.teacher_forced(trainable, frozen, partitioning_config))
    self._write(step, "train_eval", out["train_eval"])
    faults.maybe_kill("during_eval", step)
    out["infer_eval"] = self.inferred(trainable, frozen)
    self._write(step, "infer_eval", out["infer_eval"])
    return out

  def _write(self, step: int, name: str, scalars: dict[str, float]) -> None:
    # infer_eval rows say how they decoded, as `prompt-tuning eval`'s rows do.
    how = predictions.decoding_record(self.inference) if name == "infer_eval" else {}
    if name in self.writers:
      self.writers[name].write(step, scalars, task=self.data.task, split=self.spec.split,
                               **how)
    log.info("%s %s step %d: %s", name, self.spec.split, step, scalars)

  def teacher_forced(self, trainable: Any, frozen: Any,
                     partitioning_config: Optional[partitioning.PartitioningConfig]
                     ) -> dict[str, float]:
    total: dict[str, Any] = {}
    for host_batch in self.batches:
      batch = partitioning.local_batch_to_global(host_batch, self.mesh)
      with self.mesh, partitioning.logical_rules_context(partitioning_config):
        metrics = jax.device_get(self.eval_step(trainable, frozen, batch))
      for name, value in metrics.items():
        # Sums add up over batches; the rest (a wayward term) is the same in each.
        summed = name.endswith("_sum") or name.startswith("num_")
        total[name] = total.get(name, 0.0) + value if summed else value
    scalars = step_lib.summarize(total)
    scalars["num_batches"] = len(self.batches)
    return scalars

  def inferred(self, trainable: Any, frozen: Any) -> dict[str, float]:
    vocabulary = self.task.output_features["targets"].vocabulary
    preds = predictions.predict(self.model, freezing.merge(trainable, frozen), self.examples,
                                vocabulary, self.data.feature_lengths["inputs"],
                                self.data.batch_size, self.inference,
                                target_length=self.target_length)
    metrics = predictions.compute_metrics(self.task, self.examples, [p for p, _ in preds],
                                          scores=[s for _, s in preds])
    metrics["num_examples"] = len(self.examples)
    return metrics


def problems(spec: Any, task: Any = None) -> list[str]:
  """EvalSpec's settings, and the task's split when evaluation is on (before any work)."""
  if spec is None or getattr(spec, "period", None) is None:
    return []
  out = []
  period = spec.period
  if isinstance(period, bool) or not isinstance(period, int) or period < 1:
    out.append(f"EVAL_PERIOD (EvalSpec.period) must be a positive integer, or None to turn "
               f"evaluation off; got {period!r}")
  if isinstance(spec.steps, bool) or not isinstance(spec.steps, int) or spec.steps < 1:
    out.append(f"EVAL_STEPS (EvalSpec.steps) must be a positive integer; got {spec.steps!r}")
  if spec.max_examples is not None and (not isinstance(spec.max_examples, int)
                                        or spec.max_examples < 1):
    out.append(f"MAX_EVAL_EXAMPLES (EvalSpec.max_examples) must be a positive integer or "
               f"None; got {spec.max_examples!r}")
  patience = spec.early_stopping_patience
  if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int)
                               or patience < 1):
    out.append(f"EARLY_STOPPING_PATIENCE must be a positive integer or None; got {patience!r}")
  if not isinstance(spec.min_delta, (int, float)) or spec.min_delta < 0:
    out.append(f"MIN_DELTA must be a number >= 0; got {spec.min_delta!r}")
  splits = list(getattr(task, "splits", None) or ())
  if task is not None and splits and spec.split not in splits:
    out.append(f"EVAL_PERIOD is set but task {task.name} has no {spec.split!r} split to "
               f"evaluate on; it has {splits} (set EvalSpec.split, or EVAL_PERIOD = None)")
  return out


def metric_names(task: Any, spec: train_specs.EvalSpec,
                 feature_lengths: Any) -> list[str]:
  """The inference metrics the task reports, in order: its metric functions run on
  one example of the split, predicted right (a read of one example, no model)."""
  example = data_lib.eval_examples(task.name, spec.split, feature_lengths, 1)
  text = predictions._text(example[0].get("targets_pretokenized", ""))
  if spec.inference.class_labels and text not in spec.inference.class_labels:
    text = spec.inference.class_labels[0]
  return list(predictions.compute_metrics(task, example, [text], scores=[0.0]))


def best_metric_problem(checkpoint: Any, names: list[str]) -> Optional[str]:
  """BEST_METRIC must be one of the task's metrics; BEST_MODE max or min."""
  metric, mode = getattr(checkpoint, "best_metric", None), getattr(checkpoint, "best_mode", "max")
  if mode not in ("max", "min"):
    return f"BEST_MODE (CheckpointSpec.best_mode) must be 'max' or 'min'; got {mode!r}"
  if metric is not None and metric not in names:
    return f"BEST_METRIC {metric!r} is not a metric of the task; its metrics are {names}"
  if not names:
    return "the task reports no metric to keep the best prompt by"
  return None
