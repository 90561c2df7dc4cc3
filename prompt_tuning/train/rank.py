"""Training on scored candidates (rank classification): the losses and the scorer.

A rank-classification batch holds each example once with all its candidate
targets: encoder_input_tokens [B, L], candidate_target_tokens [B, C, T] (0
pads; an all-padding row is no candidate) and is_correct [B, C] (1 for the
positives, 0 for the negatives). The model scores every candidate, S(y|x) =
sum of its target tokens' log-probabilities (optionally divided by its
length), and the loss compares the positives' scores with the negatives'.

This follows the "perceptron" extension of the original prompt-tuning
library (extended/perceptron: a sequence-level cross-entropy over the
candidates' scores, and a perceptron / hinge ranking loss), with two
departures, both noted below: losses are means over examples (the library
sums them over the batch), and the hinge compares the best positive with the
best *negative* (the library's code takes the best of all candidates, which
makes its margin inert once the gold candidate leads).

Shape key: B batch, C candidates, L input length, T target length, M encoder
length, H model width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models.t5 import shift_right

Array = jax.Array
RANK_FEATURES = ("candidate_target_tokens", "is_correct")
LOSS_KINDS = ("cross_entropy", "perceptron")


@registry.configurable
@dataclasses.dataclass(frozen=True)
class RankLoss:
  """A loss over each example's scored candidates (gin: `LossSpec.rank = @RankLoss()`).

  Attributes:
    kind: "cross_entropy": a softmax over the C candidate scores, the
      positives' probability maximized, -log(sum_pos e^S / sum_all e^S);
      "perceptron": max(0, margin + max_neg S - max_pos S), the perceptron
      loss (margin 0) or its hinge extension (margin > 0).
    margin: the hinge margin m (perceptron only).
    length_normalize: divide each candidate's score by its number of target
      tokens (the library's `length_normalize`).
  """
  kind: str = "cross_entropy"
  margin: float = 0.0
  length_normalize: bool = False

  def __post_init__(self):
    if self.kind not in LOSS_KINDS:
      raise ValueError(f"RankLoss.kind={self.kind!r}; expected one of {LOSS_KINDS}")
    if self.margin < 0:
      raise ValueError(f"RankLoss.margin={self.margin} must be >= 0")
    if self.margin and self.kind != "perceptron":
      raise ValueError(f"RankLoss.margin={self.margin} applies to kind='perceptron' only, "
                       f"not {self.kind!r}")


_NEG = -1e9  # Stands in for -inf where a masked max or logsumexp must stay finite.


def cross_entropy(scores_BC: Array, positive_BC: Array, valid_BC: Array) -> Array:
  """[B] -log of the positives' share of the softmax over valid candidates.

  With one positive this is the usual cross-entropy with the candidate
  scores as logits; examples without a positive give 0 (and are not counted
  by `rank_loss`).
  """
  pos = positive_BC & valid_BC
  log_all = jax.nn.logsumexp(jnp.where(valid_BC, scores_BC, _NEG), axis=-1)
  log_pos = jax.nn.logsumexp(jnp.where(pos, scores_BC, _NEG), axis=-1)
  return jnp.where(jnp.any(pos, axis=-1), log_all - log_pos, 0.0)


def perceptron(scores_BC: Array, positive_BC: Array, valid_BC: Array,
               margin: float = 0.0) -> Array:
  """[B] max(0, margin + best negative score - best positive score).

  The gradient is the perceptron update: raise the gold score, lower the
  best wrong one, whenever the wrong one is within `margin` of it. Examples
  without a positive or without a negative give 0.
  """
  pos = positive_BC & valid_BC
  neg = ~positive_BC & valid_BC
  best_pos = jnp.max(jnp.where(pos, scores_BC, _NEG), axis=-1)
  best_neg = jnp.max(jnp.where(neg, scores_BC, _NEG), axis=-1)
  loss = jnp.maximum(0.0, margin + best_neg - best_pos)
  return jnp.where(jnp.any(pos, axis=-1) & jnp.any(neg, axis=-1), loss, 0.0)


def candidate_scores(model: nn.Module, params: Any, encoder_input_tokens_BL: Array,
                     candidates_BCT: Array, dropout_rng: Optional[Array] = None,
                     length_normalize: bool = False,
                     prompt_features: Optional[Mapping[str, Array]] = None) -> Array:
  """[B, C] candidate scores, differentiable, with dropout when `dropout_rng` is given.

  The input is encoded once per example (not once per candidate, as the
  library's fold of [B, C] into the batch does); its encoding is repeated
  for the C candidates, which run through the decoder as B * C rows.
  """
  b, c, t = candidates_BCT.shape
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  dropout = dropout_rng is not None
  encoded_BMH, mask_BM = model.apply({"params": params}, encoder_input_tokens_BL,
                                     enable_dropout=dropout, prompt_features=prompt_features,
                                     method=model.encode, rngs=rngs)
  repeat = lambda x: jnp.repeat(x, c, axis=0)  # noqa: E731  [B, ...] -> [B * C, ...]
  targets = candidates_BCT.reshape(b * c, t)
  feats = jax.tree.map(repeat, dict(prompt_features)) if prompt_features else None
  logits = model.apply({"params": params}, repeat(encoded_BMH), repeat(mask_BM),
                       shift_right(targets), targets, enable_dropout=dropout,
                       prompt_features=feats, method=model.decode, rngs=rngs)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_logp = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  weights = (targets > 0).astype(jnp.float32)
  scores = jnp.sum(token_logp * weights, axis=-1)
  if length_normalize:
    scores = scores / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
  return scores.reshape(b, c)


def rank_loss(config: RankLoss, scores_BC: Array, is_correct_BC: Array,
              valid_BC: Array) -> tuple[Array, dict[str, Array]]:
  """Mean loss over the examples that have a positive, and summed metrics.

  Metrics: rank_loss_sum, rank_correct_sum (the best-scored valid candidate
  is a positive) and num_examples (examples with a positive).
  """
  positive = is_correct_BC > 0
  if config.kind == "cross_entropy":
    per_example = cross_entropy(scores_BC, positive, valid_BC)
  else:
    per_example = perceptron(scores_BC, positive, valid_BC, config.margin)
  counted = jnp.any(positive & valid_BC, axis=-1).astype(jnp.float32)
  best = jnp.argmax(jnp.where(valid_BC, scores_BC, _NEG), axis=-1)
  correct = jnp.take_along_axis(positive, best[:, None], axis=-1)[:, 0]
  n = jnp.sum(counted)
  total = jnp.sum(per_example * counted)
  metrics = dict(rank_loss_sum=total, rank_correct_sum=jnp.sum(correct * counted),
                 num_examples=n)
  return total / jnp.maximum(n, 1.0), metrics
