"""The loss and the pure train / eval step functions (jitted by the caller).

Batch features (seqio's EncDecFeatureConverter, unpacked): encoder_input_tokens
[B, L], decoder_input_tokens [B, T], decoder_target_tokens [B, T],
decoder_loss_weights [B, T]; optionally task_index [B] and other per-example
features, which are passed to the prompt modules.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.train import freezing
from prompt_tuning.train import optimizers as optimizers_lib

Array = jax.Array
MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights")


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
            dropout_rng: Array | None, z_loss: float) -> tuple[Array, dict[str, Array]]:
  """Mean per-token loss (with z-loss) and summed metrics."""
  params = freezing.merge(trainable, frozen)
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


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    z_loss: float = 1e-4, dropout: bool = False) -> Callable:
  """`step(trainable, opt_state, frozen, batch, rng) -> (trainable, opt_state, metrics)`.

  Gradients are taken with respect to `trainable` only, so no weight
  gradient of the frozen backbone is ever computed. A step whose loss or
  update is not finite changes nothing (`metrics['finite']` is 0): the caller
  stops or counts it as skipped.
  """
  def step(trainable, opt_state, frozen, batch, rng):
    dropout_rng = jax.random.fold_in(rng, 0) if dropout else None
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, frozen, model, batch, dropout_rng, z_loss)
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


def make_eval_step(model: nn.Module, z_loss: float = 1e-4) -> Callable:
  """`eval_step(trainable, frozen, batch) -> summed metrics` (teacher-forced)."""
  def eval_step(trainable, frozen, batch):
    loss, metrics = loss_fn(trainable, frozen, model, batch, None, z_loss)
    return dict(metrics, loss=loss)
  return eval_step


def summarize(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host-side per-token averages of one step's (or summed steps') metrics."""
  n = float(metrics["num_tokens"])
  out = {"loss": float(metrics["cross_entropy_sum"] + metrics["z_loss_sum"]) / n,
         "cross_entropy": float(metrics["cross_entropy_sum"]) / n,
         "z_loss": float(metrics["z_loss_sum"]) / n,
         "accuracy": float(metrics["correct_sum"]) / n,
         "num_tokens": n}
  for k in ("grad_norm", "update_norm", "learning_rate"):
    if k in metrics:
      out[k] = float(metrics[k])
  return out
