"""Predictions and their metrics: what `eval`, `infer` and evaluation during training share.

`predict` turns examples into (text, score) pairs with the in-memory
parameters, by decoding, by rank classification over class labels, or by
scoring each example's own target; `compute_metrics` runs the task's
postprocessor and metric functions on them. The `eval` binary
(evaluation.py) and `train`'s evaluation every EVAL_PERIOD steps both call
them, so the figures they report for one set of parameters are the same.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding
from prompt_tuning import trees as tree_lib
from prompt_tuning.runtime import data as data_lib
from prompt_tuning.runtime import specs as specs_lib

Array = jax.Array

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


def _jitted_functions(model: nn.Module, decoding_config: decoding.DecodingConfig
                      ) -> tuple[Callable[..., Any], ...]:
  """predict's three jitted functions: generate, score, score_candidates."""
  gen = jax.jit(lambda p, x, f, r: decoding.generate(model, p, x, decoding_config, rng=r,
                                                     prompt_features=f or None))
  score_fn = jax.jit(lambda p, x, t, f: decoding.score(model, p, x, t,
                                                       prompt_features=f or None))
  candidates_fn = jax.jit(lambda p, x, c, f: decoding.score_candidates(
      model, p, x, c, prompt_features=f or None))
  return gen, score_fn, candidates_fn


_JITTED_FUNCTIONS = tree_lib.SharedCache(maxsize=16)


def compiled_functions(model: nn.Module, decoding_config: decoding.DecodingConfig
                       ) -> tuple[Callable[..., Any], ...]:
  """`_jitted_functions`, shared by every `predict` call on an equal model and config.

  Linen modules compare by their fields, initializers left out
  (`trees.without_initializers`), so a second evaluation of the same
  architecture and prompt module (another checkpoint, another prompt value
  or initializer: all in `params`) reuses the programs compiled for the first
  instead of tracing and compiling them again. A module with an unhashable
  field gets fresh functions.
  """
  return _JITTED_FUNCTIONS.get((tree_lib.without_initializers(model), decoding_config),
                               lambda: _jitted_functions(model, decoding_config))


def predict(model: nn.Module, params: Any, examples: Sequence[Mapping[str, Any]],
            vocabulary: Any, input_length: int, batch_size: int,
            inference: specs_lib.InferenceSpec = specs_lib.InferenceSpec(),
            seed: int = 0, target_length: Optional[int] = None) -> list[tuple[str, float]]:
  """(prediction text, score) per example, in order.

  `inference` says how: its decoding config, class labels (rank
  classification: score each label, predict the best) and ensemble; what it
  says about restoring and how many examples is for the caller.
  With `target_length`, nothing is decoded: each example's own target is
  scored (the rank-classification task variants, one candidate per example),
  and the text returned is empty. Per-example features the prompt modules
  read (task_index) are passed along.

  `inference.ensemble_prompts=N` (a PromptBank of N prompts for one task):
  every batch runs once per prompt; rank classification then picks by
  `ensemble_method` ("majority_vote", the paper's, or "mean_log_prob"),
  decoding by majority vote over the N decoded strings (`ensemble_vote`).
  Partial last batches are padded to `batch_size` so that one compiled
  program serves every batch.
  """
  class_labels, ensemble_method = inference.class_labels, inference.ensemble_method
  n_ens = int(inference.ensemble_prompts or 0)
  feature_names = [] if n_ens else [
      f for f in data_lib.PASSTHROUGH_FEATURES if examples and f in examples[0]]
  gen, score_fn, candidates_fn = compiled_functions(model, inference.decoding)
  if class_labels:
    label_ids = [list(np.asarray(vocabulary.encode(label))) + [1] for label in class_labels]
    targets = np.zeros((len(label_ids), max(len(ids) for ids in label_ids)), np.int32)
    for i, ids in enumerate(label_ids):
      targets[i, :len(ids)] = ids

  def scores_of(inputs, targets_BT, feats):
    """[B] scores, or [N, B] with an ensemble (which sets its own features)."""
    if not n_ens:
      return np.asarray(score_fn(params, inputs, targets_BT, feats))
    return np.asarray(ensemble_scores(
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
        best = np.asarray(ensemble_rank(jnp.asarray(scores), ensemble_method))
        scores = scores.mean(axis=0)
      else:
        best = scores.argmax(axis=-1)
      out.extend((class_labels[b], float(scores[i, b])) for i, b in enumerate(best[:real]))
    elif n_ens:
      tiled = np.tile(inputs, (n_ens, 1))
      tokens, scores = gen(params, jnp.asarray(tiled),
                           ensemble_features(batch_size, n_ens),
                           jax.random.PRNGKey(seed + n))
      texts = [_decode_text(vocabulary, r) for r in np.asarray(tokens)]
      texts_NB = [texts[k * batch_size:(k + 1) * batch_size] for k in range(n_ens)]
      scores_NB = np.asarray(scores).reshape(n_ens, batch_size)
      out.extend(ensemble_vote(texts_NB, scores_NB)[:real])
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


def ensemble_features(batch_size: int, num_prompts: int,
                      index_feature: str = "task_index") -> dict[str, Array]:
  """Features for a batch tiled N times: rows [i*B, (i+1)*B) use prompt i."""
  return {index_feature: jnp.repeat(jnp.arange(num_prompts, dtype=jnp.int32), batch_size)}


def ensemble_scores(score_fn: Callable[[Array, Array, Mapping[str, Array]], Array],
                    inputs_BL: Array, targets_BT: Array, num_prompts: int,
                    index_feature: str = "task_index") -> Array:
  """Per-prompt scores [N, B] of the same examples, from one batch of N*B rows.

  `score_fn(inputs, targets, features) -> [N*B]`, e.g. decoding.score with
  prompt_features.
  """
  b = inputs_BL.shape[0]
  tiled_inputs = jnp.tile(inputs_BL, (num_prompts, 1))
  tiled_targets = jnp.tile(targets_BT, (num_prompts, 1))
  scores = score_fn(tiled_inputs, tiled_targets,
                    ensemble_features(b, num_prompts, index_feature))
  return scores.reshape(num_prompts, b)


def ensemble_rank(scores_NBC: Array, method: str = "majority_vote") -> Array:
  """The chosen candidate per example [B] from N prompts' candidate scores [N, B, C].

  "majority_vote" (Lester et al. 2021, section 7): each prompt votes for its
  best candidate; the most votes win. Ties go to the tied candidate with the
  highest mean log-probability over all prompts, then to the lower index.
  "mean_log_prob": the best mean log-probability over prompts.
  """
  mean_BC = scores_NBC.mean(axis=0)
  if method == "mean_log_prob":
    return jnp.argmax(mean_BC, axis=-1)
  if method == "majority_vote":
    votes_BC = jax.nn.one_hot(jnp.argmax(scores_NBC, axis=-1), scores_NBC.shape[-1]).sum(axis=0)
    tied_BC = votes_BC == votes_BC.max(axis=-1, keepdims=True)
    return jnp.argmax(jnp.where(tied_BC, mean_BC, -jnp.inf), axis=-1)
  raise ValueError(f"Unknown ensemble method {method!r}; expected 'majority_vote' or "
                   "'mean_log_prob'")


def ensemble_vote(texts_NB: Sequence[Sequence[str]], scores_NB: Any
                  ) -> list[tuple[str, float]]:
  """Majority vote over N prompts' decoded strings: (answer, score) per example.

  The answer most prompts gave wins; the score is the mean of its voters'
  scores. Ties go to the tied answer whose voters' mean score is highest,
  then to the one the lowest-numbered prompt gave.
  """
  scores_NB = np.asarray(scores_NB, np.float64)
  out = []
  for i in range(scores_NB.shape[1]):
    voters: dict[str, list[int]] = {}
    for k in range(len(texts_NB)):
      voters.setdefault(texts_NB[k][i], []).append(k)
    # dicts keep first-seen order, so max() keeps the lowest prompt on a full tie.
    answer = max(voters, key=lambda t: (len(voters[t]), scores_NB[voters[t], i].mean()))
    out.append((answer, float(scores_NB[voters[answer], i].mean())))
  return out


def decoding_record(inference: specs_lib.InferenceSpec) -> dict[str, Any]:
  """How an eval decoded, for its metrics row: 'greedy', 'beam', 'sample' or
  'rank_classification' (with its labels); beams and ensembles where used."""
  if inference.class_labels:
    out = dict(decoding="rank_classification", class_labels=list(inference.class_labels))
  else:
    out = dict(decoding=inference.decoding.method)
    if inference.decoding.method == "beam":
      out["num_beams"] = inference.decoding.num_beams
  if inference.ensemble_prompts:
    out["ensemble"] = f"{inference.ensemble_prompts} prompts, {inference.ensemble_method}"
  return out
