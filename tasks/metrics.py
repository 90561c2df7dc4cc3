"""Metric functions with seqio's signatures.

Prediction metrics take (targets, predictions) after the task's postprocessor;
score metrics take (targets, scores). Every value is a percentage, as in T5's
reports (correlations times 100).

Classification postprocessors turn an unknown string into label -1 (see
postprocessors.py): it never equals a target, so it counts as wrong. In binary
F1 and Matthews correlation it is replaced by the opposite of the target,
which is what "wrong" means there.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Sequence

import numpy as np
from scipy import stats


def _check(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not len(targets):
    raise ValueError("No examples to score")


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target string."""
  _check(targets, predictions)
  return {"exact_match": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  _check(targets, predictions)
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _binary(targets, predictions) -> tuple[np.ndarray, np.ndarray]:
  t = np.asarray(targets, np.int64)
  p = np.asarray(predictions, np.int64)
  if set(np.unique(t)) - {0, 1}:
    raise ValueError(f"Binary metrics need targets in {{0, 1}}, got {sorted(set(t.tolist()))}")
  unknown = (p != 0) & (p != 1)
  return t, np.where(unknown, 1 - t, p)


def _f1(tp: float, fp: float, fn: float) -> float:
  return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_binary(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """F1 of the positive class (label 1)."""
  _check(targets, predictions)
  t, p = _binary(targets, predictions)
  tp = float(np.sum((t == 1) & (p == 1)))
  return {"f1": 100.0 * _f1(tp, float(np.sum((t == 0) & (p == 1))),
                            float(np.sum((t == 1) & (p == 0))))}


def f1_macro(targets: Sequence[int], predictions: Sequence[int],
             num_classes: int = 0) -> dict[str, float]:
  """Unweighted mean of per-class F1 over classes 0..num_classes-1 (CB's F1).

  An unknown prediction (-1) is a false negative for the true class and a
  false positive for none.
  """
  _check(targets, predictions)
  t, p = np.asarray(targets), np.asarray(predictions)
  n = num_classes or int(max(t.max(), p.max())) + 1
  scores = [_f1(float(np.sum((t == c) & (p == c))), float(np.sum((t != c) & (p == c))),
                float(np.sum((t == c) & (p != c)))) for c in range(n)]
  return {"f1_macro": 100.0 * float(np.mean(scores))}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation (CoLA), 0 when a row or column of the confusion matrix is empty."""
  _check(targets, predictions)
  t, p = _binary(targets, predictions)
  tp = float(np.sum((t == 1) & (p == 1)))
  tn = float(np.sum((t == 0) & (p == 0)))
  fp = float(np.sum((t == 0) & (p == 1)))
  fn = float(np.sum((t == 1) & (p == 0)))
  denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return {"matthews_corrcoef": 0.0 if denom == 0 else 100.0 * (tp * tn - fp * fn) / denom}


def _correlation(fn: Any, targets: Sequence[float], predictions: Sequence[float]) -> float:
  """`fn` (scipy.stats.pearsonr or spearmanr) as a percentage; 0 when either side is constant.

  scipy returns NaN (with a warning) for a constant side, where the
  correlation is undefined; a NaN metric would poison checkpoint selection,
  so it counts as no correlation.
  """
  t = np.asarray(targets, np.float64)
  p = np.asarray(predictions, np.float64)
  if np.ptp(t) == 0 or np.ptp(p) == 0:
    return 0.0
  return 100.0 * float(fn(t, p).statistic)


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  _check(targets, predictions)
  return {"pearson_corrcoef": _correlation(stats.pearsonr, targets, predictions)}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Spearman's rho; tied values share the mean of their ranks."""
  _check(targets, predictions)
  return {"spearman_corrcoef": _correlation(stats.spearmanr, targets, predictions)}


# --- Question answering (SQuAD's normalization) ---------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
  """Lower case, no punctuation, no articles, single spaces (SQuAD's rule)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(gold: str, prediction: str) -> float:
  gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(prediction).split()
  if not gold_tokens or not pred_tokens:
    return float(gold_tokens == pred_tokens)
  common = collections.Counter(gold_tokens) & collections.Counter(pred_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def _answers(target: Any) -> list[str]:
  if isinstance(target, str):
    return [target]
  return [a.decode("utf-8") if isinstance(a, bytes) else str(a) for a in target]


def squad(targets: Sequence[Any], predictions: Sequence[str]) -> dict[str, float]:
  """Exact match and token F1, each the best over a question's gold answers."""
  _check(targets, predictions)
  em, f1 = [], []
  for target, pred in zip(targets, predictions):
    answers = _answers(target) or [""]
    em.append(max(float(normalize_answer(a) == normalize_answer(pred)) for a in answers))
    f1.append(max(token_f1(a, pred) for a in answers))
  return {"exact_match": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def _grouped(targets: Sequence[dict], predictions: Sequence[dict]):
  """{group: (target, prediction)} keeping each group's first example."""
  out: dict[Any, tuple[Any, Any]] = {}
  for t, p in zip(targets, predictions):
    out.setdefault(t["group"], (t, p))
  return out


def record(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
  """ReCoRD: SQuAD exact match and F1 per query (duplicated examples counted once)."""
  _check(targets, predictions)
  pairs = list(_grouped(targets, predictions).values())
  return squad([t["answers"] for t, _ in pairs], [p["value"] for _, p in pairs])


def multirc(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
  """MultiRC: exact match per question (every answer option right) and F1a over options."""
  _check(targets, predictions)
  by_question: dict[Any, list[bool]] = collections.defaultdict(list)
  for t, p in zip(targets, predictions):
    by_question[t["group"]].append(t["value"] == p["value"])
  f1a = f1_binary([t["value"] for t in targets], [p["value"] for p in predictions])["f1"]
  return {"exact_match": 100.0 * float(np.mean([all(v) for v in by_question.values()])),
          "f1a": f1a}


def rank_classification(targets: Sequence[tuple[Any, bool]],
                        scores: Sequence[float]) -> dict[str, float]:
  """Accuracy of the best-scored candidate of each example.

  `targets` are (example id, is_correct) pairs, one per scored candidate.
  """
  if len(targets) != len(scores):
    raise ValueError(f"{len(targets)} targets but {len(scores)} scores")
  best: dict[Any, tuple[float, bool]] = {}
  for (key, correct), score in zip(targets, scores):
    if key not in best or score > best[key][0]:
      best[key] = (float(score), bool(correct))
  if not best:
    raise ValueError("No examples to score")
  return {"accuracy": 100.0 * float(np.mean([c for _, c in best.values()]))}
