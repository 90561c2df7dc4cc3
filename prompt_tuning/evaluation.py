"""Evaluation and inference with a trained prompt (the `eval` and `infer` binaries).

Predictions come from decoding (greedy / beam / sampling) or, for
classification tasks, from rank classification over CLASS_LABELS: every label
is scored as a target and the best one is the prediction. Predictions and
targets go through the task's postprocessor, then its metric functions.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.readers import tree as tree_lib
from prompt_tuning.train import checkpoints as checkpoints_lib
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import freezing
from prompt_tuning.train import model_setup
from prompt_tuning.train import partitioning

log = logging.getLogger(__name__)


def load_for_inference(model_dir: Optional[str], model_config: T5Config,
                       initial_checkpoint_path: Optional[str],
                       encoder_prompt: Optional[nn.Module],
                       trainable_rules: Optional[freezing.Rules],
                       checkpoint_step: Optional[int],
                       restore_checkpoint: bool,
                       partitioning_config: partitioning.PartitioningConfig = (
                           partitioning.PartitioningConfig())
                       ) -> tuple[model_setup.ModelSetup, Any, int]:
  """(setup, full params, step): prompts from MODEL_DIR's checkpoint, or as initialized.

  With `restore_checkpoint=False` (e.g. PROMPT_FILE with the from-file
  initializer) the trainable parameters are exactly what the initializers give.
  """
  setup = model_setup.build(model_config, initial_checkpoint_path, encoder_prompt,
                            trainable_rules=trainable_rules, require_trainable=False,
                            partitioning_config=partitioning_config)
  trainable, step = setup.trainable, 0
  if restore_checkpoint:
    if not model_dir:
      raise ValueError("Restoring a checkpoint needs MODEL_DIR")
    store = checkpoints_lib.CheckpointStore(model_dir)
    step = checkpoint_step if checkpoint_step is not None else store.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint under {store.directory}; train first, or pass "
                              "a prompt file with restore_checkpoint=False")
    trainable = store.restore_trainable(model_setup.abstract(trainable), step)
    store.close()
  return setup, freezing.merge(trainable, setup.frozen), int(step)


def _batches(items: Sequence[Any], size: int):
  for i in range(0, len(items), size):
    yield items[i:i + size]


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  if len(rows) == size:
    return rows
  return np.concatenate([rows, np.zeros((size - len(rows),) + rows.shape[1:], rows.dtype)])


def _decode_text(vocabulary: Any, row: np.ndarray) -> str:
  ids = [int(t) for t in row]
  return vocabulary.decode(ids[:ids.index(1)] if 1 in ids else ids)


def predict(model: nn.Module, params: Any, examples: Sequence[Mapping[str, Any]],
            vocabulary: Any, input_length: int, batch_size: int,
            decoding_config: decoding.DecodingConfig = decoding.DecodingConfig(),
            class_labels: Optional[Sequence[str]] = None,
            seed: int = 0, target_length: Optional[int] = None,
            ensemble_prompts: int = 0,
            ensemble_method: str = "mean_log_prob") -> list[tuple[str, float]]:
  """(prediction text, score) per example, in order.

  With `target_length`, nothing is decoded: each example's own target is
  scored (the rank-classification task variants, one candidate per example),
  and the text returned is empty. Per-example features the prompt modules
  read (task_index) are passed along.

  `ensemble_prompts=N` (a PromptBank of N prompts for one task): every batch
  runs once per prompt; rank classification then picks by `ensemble_method`
  ("mean_log_prob" or "majority_vote"), decoding by majority vote over the N
  decoded strings.
  Partial last batches are padded to `batch_size` so that one compiled
  program serves every batch.
  """
  from prompt_tuning.prompts import multi_task
  n_ens = int(ensemble_prompts or 0)
  feature_names = [] if n_ens else [
      f for f in data_lib.PASSTHROUGH_FEATURES if examples and f in examples[0]]
  gen = jax.jit(lambda p, x, f, r: decoding.generate(model, p, x, decoding_config, rng=r,
                                                     prompt_features=f or None))
  score_fn = jax.jit(lambda p, x, t, f: decoding.score(model, p, x, t,
                                                       prompt_features=f or None))
  candidates_fn = jax.jit(lambda p, x, c, f: decoding.score_candidates(
      model, p, x, c, prompt_features=f or None))
  if class_labels:
    label_ids = [list(np.asarray(vocabulary.encode(label))) + [1] for label in class_labels]
    targets = np.zeros((len(label_ids), max(len(ids) for ids in label_ids)), np.int32)
    for i, ids in enumerate(label_ids):
      targets[i, :len(ids)] = ids

  def scores_of(inputs, targets_BT, feats):
    """[B] scores, or [N, B] with an ensemble (which sets its own features)."""
    if not n_ens:
      return np.asarray(score_fn(params, inputs, targets_BT, feats))
    return np.asarray(multi_task.ensemble_scores(
        lambda x, t, f: score_fn(params, x, t, f), inputs, targets_BT, n_ens))

  out: list[tuple[str, float]] = []
  for n, chunk in enumerate(_batches(list(examples), batch_size)):
    real = len(chunk)
    inputs = _pad_rows(data_lib.pad_batch(chunk, "inputs", input_length), batch_size)
    feats = {f: _pad_rows(np.asarray([ex[f] for ex in chunk], np.int32), batch_size)
             for f in feature_names}
    if target_length:
      targets_BT = _pad_rows(data_lib.pad_batch(chunk, "targets", target_length), batch_size)
      scores = scores_of(inputs, targets_BT, feats)
      scores = scores.mean(axis=0) if n_ens else scores
      out.extend(("", float(s)) for s in scores[:real])
    elif class_labels and not n_ens and model.decoder_prompt is None:
      # One encoding scores every label (cached decoding has no decoder prompt).
      scores = np.asarray(candidates_fn(params, inputs, targets, feats))  # [B, C]
      best = scores.argmax(axis=-1)
      out.extend((class_labels[b], float(scores[i, b])) for i, b in enumerate(best[:real]))
    elif class_labels:
      scores = np.stack([scores_of(inputs, np.tile(t, (batch_size, 1)), feats)
                         for t in targets],
                        axis=-1)  # [B, C] or [N, B, C]
      if n_ens:
        best = np.asarray(multi_task.ensemble_rank(jnp.asarray(scores), ensemble_method))
        scores = scores.mean(axis=0)
      else:
        best = scores.argmax(axis=-1)
      out.extend((class_labels[b], float(scores[i, b])) for i, b in enumerate(best[:real]))
    elif n_ens:
      tiled = np.tile(inputs, (n_ens, 1))
      tokens, scores = gen(params, jnp.asarray(tiled),
                           multi_task.ensemble_features(batch_size, n_ens),
                           jax.random.PRNGKey(seed + n))
      texts = [_decode_text(vocabulary, r) for r in np.asarray(tokens)]
      scores = np.asarray(scores).reshape(n_ens, batch_size)
      for i in range(real):
        votes = [texts[k * batch_size + i] for k in range(n_ens)]
        winner = max(votes, key=votes.count)  # ties: the lowest prompt index
        out.append((winner, float(scores[votes.index(winner), i])))
    else:
      tokens, scores = gen(params, jnp.asarray(inputs), feats, jax.random.PRNGKey(seed + n))
      for row, score in zip(np.asarray(tokens)[:real], np.asarray(scores)[:real]):
        out.append((_decode_text(vocabulary, row), float(score)))
  return out


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _postprocess(task: Any, text: str, example: Mapping[str, Any], is_target: bool) -> Any:
  post = task.postprocess_fn
  return text if post is None else post(text, example=example, is_target=is_target)


def uses_scores(task: Any) -> bool:
  """Whether the task is evaluated by scoring its targets (rank classification)."""
  return bool(getattr(task, "score_metric_fns", None)) and not task.predict_metric_fns


def compute_metrics(task: Any, examples: Sequence[Mapping[str, Any]],
                    predictions: Sequence[str],
                    scores: Optional[Sequence[float]] = None) -> dict[str, float]:
  """Runs the task's postprocessor, then its prediction (and score) metric functions."""
  targets = [_postprocess(task, _text(ex["targets_pretokenized"]), ex, True) for ex in examples]
  preds = [_postprocess(task, p, ex, False) for p, ex in zip(predictions, examples)]
  metrics: dict[str, float] = {}
  calls = [(fn, preds) for fn in task.predict_metric_fns]
  if scores is not None:
    calls += [(fn, list(scores)) for fn in task.score_metric_fns]
  for metric_fn, values in calls:
    for name, value in metric_fn(targets, values).items():
      metrics[name] = float(getattr(value, "value", value))
  return metrics


def _predict_split(model_dir, model_config, task_name, feature_lengths, batch_size,
                   initial_checkpoint_path, encoder_prompt, trainable_rules, split,
                   checkpoint_step, restore_checkpoint, decoding_config, class_labels,
                   max_examples, partitioning_config, ensemble_prompts=0,
                   ensemble_method="mean_log_prob"):
  """(task, examples, [(prediction, score)], step) for eval and infer alike."""
  task = data_lib.get_task_or_mixture(task_name)
  data_lib.check_vocabulary(task, model_config.vocab_size)
  setup, params, step = load_for_inference(model_dir, model_config, initial_checkpoint_path,
                                           encoder_prompt, trainable_rules, checkpoint_step,
                                           restore_checkpoint, partitioning_config)
  examples = data_lib.eval_examples(task_name, split, feature_lengths, max_examples)
  vocab = task.output_features["targets"].vocabulary
  target_length = feature_lengths.get("targets") if (
      uses_scores(task) and not class_labels) else None
  preds = predict(setup.model, params, examples, vocab, feature_lengths["inputs"],
                  batch_size, decoding_config, class_labels, target_length=target_length,
                  ensemble_prompts=ensemble_prompts, ensemble_method=ensemble_method)
  return task, examples, preds, step


def evaluate(*, model_dir: str, model_config: T5Config, mixture_or_task_name: str,
             task_feature_lengths: Mapping[str, int], batch_size: int,
             initial_checkpoint_path: Optional[str],
             encoder_prompt: Optional[nn.Module] = None,
             trainable_rules: Optional[freezing.Rules] = None,
             split: str = "validation", checkpoint_step: Optional[int] = None,
             restore_checkpoint: bool = True,
             decoding_config: decoding.DecodingConfig = decoding.DecodingConfig(),
             class_labels: Optional[Sequence[str]] = None,
             max_examples: Optional[int] = None,
             output_name: str = "eval",
             partitioning_config: partitioning.PartitioningConfig = (
                 partitioning.PartitioningConfig()),
             ensemble_prompts: int = 0,
             ensemble_method: str = "mean_log_prob") -> dict[str, Any]:
  """Metrics of a split; appended to MODEL_DIR/<output_name>/metrics.jsonl and TensorBoard."""
  from prompt_tuning.train.loop import MetricsWriter
  task, examples, preds, step = _predict_split(
      model_dir, model_config, mixture_or_task_name, task_feature_lengths, batch_size,
      initial_checkpoint_path, encoder_prompt, trainable_rules, split, checkpoint_step,
      restore_checkpoint, decoding_config, class_labels, max_examples, partitioning_config,
      ensemble_prompts, ensemble_method)
  metrics = compute_metrics(task, examples, [p for p, _ in preds],
                            scores=[s for _, s in preds])
  metrics["num_examples"] = len(examples)
  MetricsWriter(model_dir, output_name).write(step, metrics, task=mixture_or_task_name,
                                               split=split)
  log.info("%s %s step %d: %s", mixture_or_task_name, split, step, metrics)
  return dict(step=step, **metrics)


def infer(*, model_dir: str, model_config: T5Config, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], batch_size: int,
          initial_checkpoint_path: Optional[str],
          encoder_prompt: Optional[nn.Module] = None,
          trainable_rules: Optional[freezing.Rules] = None,
          split: str = "validation", checkpoint_step: Optional[int] = None,
          restore_checkpoint: bool = True,
          decoding_config: decoding.DecodingConfig = decoding.DecodingConfig(),
          class_labels: Optional[Sequence[str]] = None,
          max_examples: Optional[int] = None,
          partitioning_config: partitioning.PartitioningConfig = (
              partitioning.PartitioningConfig()),
          ensemble_prompts: int = 0,
          ensemble_method: str = "mean_log_prob") -> str:
  """Writes JSON Lines of {input, target, prediction, score}; returns the file's path."""
  _, examples, preds, step = _predict_split(
      model_dir, model_config, mixture_or_task_name, task_feature_lengths, batch_size,
      initial_checkpoint_path, encoder_prompt, trainable_rules, split, checkpoint_step,
      restore_checkpoint, decoding_config, class_labels, max_examples, partitioning_config,
      ensemble_prompts, ensemble_method)
  out_dir = os.path.join(model_dir, "infer")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{mixture_or_task_name}-{split}-step_{step}.jsonl")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for ex, (pred, score) in zip(examples, preds):
      f.write(json.dumps(dict(input=_text(ex.get("inputs_pretokenized", "")),
                              target=_text(ex.get("targets_pretokenized", "")),
                              prediction=pred, score=score)) + "\n")
  os.replace(tmp, path)
  return path
