"""The loss and the pure train / eval step functions (jitted by the caller).

Batch features (seqio's EncDecFeatureConverter, unpacked): encoder_input_tokens
[B, L], decoder_input_tokens [B, T], decoder_target_tokens [B, T],
decoder_loss_weights [B, T]; optionally task_index [B] and other per-example
features, which are passed to the prompt modules. A rank-classification batch
(train/rank_data.py) has candidate_target_tokens [B, C, T] and is_correct
[B, C] instead of the decoder arrays; a `RankLoss` trains on it.

The objective is the task loss (token cross-entropy with z-loss, or a rank
loss over scored candidates) plus, optionally, the wayward term of
train/wayward.py; each part is reported on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.runtime import freezing
from prompt_tuning.train import optimizers as optimizers_lib
from prompt_tuning.train import rank as rank_lib
from prompt_tuning.train import wayward as wayward_lib

Array = jax.Array
MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights", *rank_lib.RANK_FEATURES)


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the step minimizes: a task loss, plus the wayward term if set.

  Attributes:
    rank_loss: train on scored candidates with this loss (the batch must be a
      grouped rank-classification batch); None: token cross-entropy with
      z-loss.
    wayward: (prompt path, E(text) [P, H], gamma) from `wayward.resolve`;
      None: no wayward term.
  """
  rank_loss: Optional[rank_lib.RankLoss] = None
  wayward: Optional[tuple[str, Any, float]] = None


def cross_entropy_with_z_loss(logits_BTV: Array, targets_BT: Array, weights_BT: Array,
                              z_loss: float) -> tuple[Array, Array, Array]:
  """Sums over weighted tokens: (cross-entropy, z-loss, correct predictions).

  The z-loss (T5X, Mesh TF) is z_loss * log(Z)^2 per token; it keeps the
  softmax normalizer near 1 and is part of the training objective.
  """
  logits = logits_BTV.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
  weights = weights_BT.astype(jnp.float32)
  ce = jnp.sum((log_z - target_logit) * weights)
  zl = jnp.sum(z_loss * jnp.square(log_z) * weights)
  correct = jnp.sum((jnp.argmax(logits, -1) == targets_BT) * weights)
  return ce, zl, correct


def prompt_features(batch: Mapping[str, Array]) -> dict[str, Array]:
  """Per-example features other than the model's token arrays (e.g. task_index)."""
  return {k: v for k, v in batch.items() if k not in MODEL_FEATURES}


def loss_fn(trainable: Any, frozen: Any, model: nn.Module, batch: Mapping[str, Array],
            dropout_rng: Array | None, z_loss: float,
            objective: Objective = Objective()) -> tuple[Array, dict[str, Array]]:
  """The loss to minimize (task loss + wayward term) and summed metrics."""
  params = freezing.merge(trainable, frozen)
  if objective.rank_loss is not None:
    loss, metrics = _rank_task_loss(params, model, batch, dropout_rng, objective.rank_loss)
  else:
    loss, metrics = _token_task_loss(params, model, batch, dropout_rng, z_loss)
  if objective.wayward is not None:
    path, target_PH, gamma = objective.wayward
    dist = wayward_lib.distance(wayward_lib.prompt_of(trainable, path), jnp.asarray(target_PH))
    metrics = dict(metrics, wayward_distance=dist, wayward_loss=gamma * dist, task_loss=loss)
    loss = loss + gamma * dist
  return loss, metrics


def _token_task_loss(params: Any, model: nn.Module, batch: Mapping[str, Array],
                     dropout_rng: Array | None, z_loss: float
                     ) -> tuple[Array, dict[str, Array]]:
  """Mean per-token loss (with z-loss) and summed metrics."""
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                       batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                       enable_dropout=dropout_rng is not None,
                       prompt_features=prompt_features(batch) or None, rngs=rngs)
  weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] > 0)
  ce, zl, correct = cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"], weights,
                                              z_loss)
  num_tokens = jnp.maximum(jnp.sum(weights.astype(jnp.float32)), 1.0)
  metrics = dict(cross_entropy_sum=ce, z_loss_sum=zl, correct_sum=correct,
                 num_tokens=num_tokens)
  return (ce + zl) / num_tokens, metrics


def _rank_task_loss(params: Any, model: nn.Module, batch: Mapping[str, Array],
                    dropout_rng: Array | None, config: rank_lib.RankLoss
                    ) -> tuple[Array, dict[str, Array]]:
  """Mean rank loss over the examples that have a correct candidate."""
  if "candidate_target_tokens" not in batch:
    raise ValueError(f"RankLoss needs a rank-classification batch (candidate_target_tokens, "
                     f"is_correct); this batch has {sorted(batch)}")
  candidates = batch["candidate_target_tokens"]
  scores = rank_lib.candidate_scores(model, params, batch["encoder_input_tokens"], candidates,
                                     dropout_rng, config.length_normalize,
                                     prompt_features(batch) or None)
  valid = jnp.any(candidates > 0, axis=-1)
  return rank_lib.rank_loss(config, scores, batch["is_correct"], valid)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    z_loss: float = 1e-4, dropout: bool = False,
                    objective: Objective = Objective(),
                    num_microbatches: int = 1) -> Callable:
  """`step(trainable, opt_state, frozen, batch, rng) -> (trainable, opt_state, metrics)`.

  Gradients are taken with respect to `trainable` only, so no weight
  gradient of the frozen backbone is ever computed. A step whose loss or
  update is not finite changes nothing (`metrics['finite']` is 0): the caller
  stops or counts it as skipped.

  `num_microbatches` = k > 1 (T5X's Trainer.num_microbatches) computes the
  batch's gradient in k parts, one after another (`lax.scan`), and makes one
  update: activation memory falls about k-fold for the same global batch. The
  parts' gradients are weighted by their share of the batch's loss normalizer
  (target tokens, or examples for a rank loss), so the update is the
  single-batch one up to float rounding.
  """
  def step(trainable, opt_state, frozen, batch, rng):
    dropout_rng = jax.random.fold_in(rng, 0) if dropout else None
    if num_microbatches > 1:
      (loss, metrics), grads = _microbatched_value_and_grad(
          trainable, frozen, model, batch, dropout_rng, z_loss, objective, num_microbatches)
    else:
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          trainable, frozen, model, batch, dropout_rng, z_loss, objective)
    updates, new_opt_state = optimizer.update(grads, opt_state, trainable)
    update_norm = optax.global_norm(updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(update_norm)
    new_trainable = optax.apply_updates(trainable, updates)
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    trainable = jax.tree.map(keep, new_trainable, trainable)
    opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                   update_norm=update_norm, finite=finite.astype(jnp.float32))
    lr = optimizers_lib.current_learning_rate(opt_state)
    if lr is not None:
      metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
    return trainable, opt_state, metrics
  return step


# Metrics that add up over the parts of a batch; the others are weighted means.
_SUMMED = ("num_tokens", "num_examples")


def split_microbatches(batch: Mapping[str, Array], k: int) -> dict[str, Array]:
  """[B, ...] arrays -> [k, B / k, ...]; part j holds rows j, j + k, j + 2k, ...

  Interleaved rather than contiguous: with the batch sharded over `data` in
  contiguous blocks, every part then takes the same rows from each device's
  block (when k divides the per-device batch), so no part moves across devices.
  """
  def split(x):
    x = jnp.asarray(x)
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
  return {name: split(x) for name, x in batch.items()}


def _microbatched_value_and_grad(trainable, frozen, model, batch, dropout_rng, z_loss,
                                 objective, k):
  """(loss, metrics), grads of the whole batch, computed over k microbatches.

  Each part's loss is a mean over its normalizer n_j (tokens, or examples),
  so the batch's gradient is sum_j n_j * grad_j / sum_j n_j; a wayward term,
  the same in every part, keeps its weight of one. Part j's dropout key is
  the step's key folded with j: deterministic, though not the masks a single
  batch would draw.
  """
  parts = split_microbatches(batch, k)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def body(acc, xs):
    index, part = xs
    rng = jax.random.fold_in(dropout_rng, index) if dropout_rng is not None else None
    (loss, metrics), grads = grad_fn(trainable, frozen, model, part, rng, z_loss, objective)
    n = _normalizer(metrics)
    acc = jax.tree.map(lambda a, g: a + n * g.astype(a.dtype), acc, grads)
    return acc, (loss, metrics, n)

  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.result_type(x.dtype, jnp.float32)),
                       trainable)
  summed, (losses, metrics, ns) = jax.lax.scan(body, zeros, (jnp.arange(k), parts))
  total = jnp.maximum(jnp.sum(ns), 1e-9)
  grads = jax.tree.map(lambda g, x: (g / total).astype(x.dtype), summed, trainable)
  weights = ns / total
  combined = {name: (jnp.sum(v, axis=0) if name.endswith("_sum") or name in _SUMMED
                     else jnp.tensordot(weights, v, axes=1))
              for name, v in metrics.items()}
  return (jnp.sum(weights * losses), combined), grads


def _normalizer(metrics: Mapping[str, Array]) -> Array:
  """What a part's loss is a mean over: its target tokens, or its examples (rank loss)."""
  for name in _SUMMED:
    if name in metrics:
      return jnp.asarray(metrics[name], jnp.float32)
  return jnp.ones((), jnp.float32)


def make_eval_step(model: nn.Module, z_loss: float = 1e-4,
                   objective: Objective = Objective()) -> Callable:
  """`eval_step(trainable, frozen, batch) -> summed metrics` (teacher-forced)."""
  def eval_step(trainable, frozen, batch):
    loss, metrics = loss_fn(trainable, frozen, model, batch, None, z_loss, objective)
    return dict(metrics, loss=loss)
  return eval_step


def summarize(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host-side averages of one step's (or summed steps') metrics.

  Token loss: per-token loss, cross_entropy, z_loss, accuracy. Rank loss:
  per-example loss, rank_loss, rank_accuracy (the best-scored candidate is
  correct). With the wayward term, `loss` includes it and task_loss,
  wayward_loss (gamma times the distance) and wayward_distance stand beside it.
  """
  if "rank_loss_sum" in metrics:
    n = float(metrics["num_examples"])
    task = float(metrics["rank_loss_sum"]) / max(n, 1.0)
    out = {"rank_loss": task, "rank_accuracy": float(metrics["rank_correct_sum"]) / max(n, 1.0),
           "num_examples": n}
  else:
    n = float(metrics["num_tokens"])
    task = float(metrics["cross_entropy_sum"] + metrics["z_loss_sum"]) / n
    out = {"cross_entropy": float(metrics["cross_entropy_sum"]) / n,
           "z_loss": float(metrics["z_loss_sum"]) / n,
           "accuracy": float(metrics["correct_sum"]) / n,
           "num_tokens": n}
  out["loss"] = task
  if "wayward_loss" in metrics:
    out.update(task_loss=task, wayward_loss=float(metrics["wayward_loss"]),
               wayward_distance=float(metrics["wayward_distance"]),
               loss=task + float(metrics["wayward_loss"]))
  for k in ("grad_norm", "update_norm", "learning_rate"):
    if k in metrics:
      out[k] = float(metrics[k])
  return out
