"""Aggregates over seeds, the check that a figure can separate methods, and the
significance tests behind every verdict.

A claim is tested against a named control, and its verdict is one of four:
"reproduced (p < 0.05)" (the effect goes the paper's way and the test rejects
no effect at 0.05), "contradicted (p < 0.05)" (it goes the other way, just as
significantly), "inconclusive", or "not testable here: <reason>".

The tests: on one shared evaluation set, paired per example (McNemar's exact
test for two accuracies, a paired bootstrap for continuous scores); across
seeds (independent runs), an exact permutation test of the difference in
means, with the interval that inverts it (the shifts it does not reject). Effects are in points (%)
with their 95% interval.
"""

from __future__ import annotations

from typing import Any, Sequence

import itertools
import math

import numpy as np

from benchmarks.research.config import Suite, SuiteError

def aggregate(rows: Sequence[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
  """Mean and standard deviation over seeds, grouped by `keys`."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  out = []
  for key, members in groups.items():
    scores = np.asarray([m["score"] for m in members], np.float64)
    out.append({**dict(zip(keys, key)), "mean": float(scores.mean()),
                "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
                "seeds": len(scores), "scores": scores.tolist(),
                "trainable_parameters": members[0]["trainable_parameters"]})
  return out


def check_separates(rows: Sequence[dict[str, Any]], experiment: str,
                    refuse: bool = True) -> list[str]:
  """Fails on a task where every run of every method scored the same 0% or 100%
  (with `refuse=False`, returns those messages instead)."""
  by_task: dict[str, set[float]] = {}
  for r in rows:
    by_task.setdefault(f"{r['task']} ({r['size']})", set()).add(round(r["score"], 6))
  problems = []
  for task, scores in by_task.items():
    if len(scores) == 1 and next(iter(scores)) in (0.0, 100.0):
      problems.append(
          f"{experiment}: every method and seed scores {next(iter(scores)):.0f}% on {task}; "
          "this figure cannot separate methods: make the task harder (or easier) instead "
          "of reporting it")
  if problems and refuse:
    raise SuiteError(problems[0])
  return problems




ALPHA = 0.05
REPRODUCED = "reproduced (p < 0.05)"
CONTRADICTED = "contradicted (p < 0.05)"
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable here"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE)


def not_testable(reason: str) -> str:
  return f"{NOT_TESTABLE}: {reason}"


def is_verdict(text: str) -> bool:
  """One of the four verdicts (the last with its reason)."""
  return text in VERDICTS or (text.startswith(NOT_TESTABLE + ": ") and
                              len(text) > len(NOT_TESTABLE) + 2)


def verdict(p: float, effect: float, expected_sign: int = 1) -> str:
  """The verdict of a test whose claim predicts an effect of `expected_sign`."""
  if not p < ALPHA or effect == 0 or not np.isfinite(effect):
    return INCONCLUSIVE
  return REPRODUCED if np.sign(effect) == np.sign(expected_sign) else CONTRADICTED


def _binomial_two_sided(k: int, n: int) -> float:
  """Exact two-sided p of k successes in n fair coin flips (doubling the smaller tail)."""
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
  """McNemar's exact test: do two predictors on the same examples differ in accuracy?

  Only the discordant examples count (a right where b is wrong: n_ab; the
  reverse: n_ba); under no difference each is a fair coin flip. The effect is
  accuracy(a) - accuracy(b) in points, with a Wald interval for paired
  proportions.
  """
  a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"McNemar needs two equal, non-empty per-example vectors: {a.shape}, {b.shape}")
  n = len(a)
  n_ab, n_ba = int(np.sum(a & ~b)), int(np.sum(~a & b))
  effect = (n_ab - n_ba) / n
  se = math.sqrt(max(n_ab + n_ba - (n_ab - n_ba) ** 2 / n, 0.0)) / n
  return dict(test="McNemar exact (paired per example)", p=_binomial_two_sided(n_ab, n_ab + n_ba),
              effect=100.0 * effect, ci=(100.0 * (effect - 1.96 * se), 100.0 * (effect + 1.96 * se)),
              n=n, discordant=(n_ab, n_ba))


def paired_bootstrap(x: Sequence[float], y: Sequence[float], resamples: int = 10000,
                     seed: int = 0) -> dict[str, Any]:
  """A paired bootstrap over examples of mean(x - y): its 95% percentile interval,
  and a two-sided p (twice the share of resampled means on the far side of 0)."""
  d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
  if d.ndim != 1 or not len(d):
    raise ValueError("the paired bootstrap needs two equal, non-empty per-example vectors")
  rng = np.random.RandomState(seed)
  means = d[rng.randint(0, len(d), size=(resamples, len(d)))].mean(axis=1)
  p = min(1.0, 2.0 * min(np.mean(means <= 0), np.mean(means >= 0)))
  lo, hi = np.percentile(means, [2.5, 97.5])
  return dict(test=f"paired bootstrap over examples ({resamples} resamples)", p=float(p),
              effect=float(d.mean()), ci=(float(lo), float(hi)), n=len(d))


def welch_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
  """The 95% interval of mean(a) - mean(b) by Welch's t (unequal variances)."""
  from scipy import stats as scipy_stats
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = a.mean() - b.mean()
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  if va + vb == 0:
    return float(diff), float(diff)
  dof = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1)) + (vb ** 2 / (len(b) - 1)))
  half = scipy_stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
  return float(diff - half), float(diff + half)


def _relabellings(n: int, k: int, max_exact: int, resamples: int,
                  seed: int) -> tuple[np.ndarray, bool]:
  """Masks [R, n] marking which of `n` pooled runs each relabelling puts on side a
  (`k` of them): every relabelling when there are at most `max_exact`, else
  `resamples` random ones (the same ones for every shift, so that the p of a
  shift is a function of the shift alone). Also: whether they are exact."""
  if math.comb(n, k) <= max_exact:
    combos = list(itertools.combinations(range(n), k))
    masks = np.zeros((len(combos), n), bool)
    for i, idx in enumerate(combos):
      masks[i, list(idx)] = True
    return masks, True
  rng = np.random.RandomState(seed)
  masks = np.zeros((resamples, n), bool)
  for i in range(resamples):
    masks[i, rng.permutation(n)[:k]] = True
  return masks, False


def _permutation_p(a: np.ndarray, b: np.ndarray, masks: np.ndarray, exact: bool) -> float:
  """The two-sided p of |mean(a) - mean(b)| over the relabellings in `masks`."""
  pooled = np.concatenate([a, b])
  k = len(a)
  observed = abs(a.mean() - b.mean())
  side_a = masks.astype(np.float64) @ pooled
  diffs = np.abs(side_a / k - (pooled.sum() - side_a) / (len(pooled) - k))
  count = int(np.sum(diffs >= observed - 1e-9 * max(1.0, observed)))
  return count / len(masks) if exact else (count + 1) / (len(masks) + 1)


def _shift_bound(a: np.ndarray, b: np.ndarray, masks: np.ndarray, exact: bool,
                 direction: int, alpha: float) -> float:
  """The edge, on one side of the observed difference, of the shifts d for which
  the test of (a - d) against b does not reject at `alpha` (bisection; -inf or
  +inf when no shift is rejected: too few runs for any p below alpha)."""
  observed = a.mean() - b.mean()
  span = float(np.ptp(np.concatenate([a, b]))) + abs(observed) + 1.0
  inside, outside = observed, None
  for _ in range(40):
    probe = observed + direction * span
    if _permutation_p(a - probe, b, masks, exact) < alpha:
      outside = probe
      break
    span *= 2.0
  if outside is None:
    return direction * math.inf
  for _ in range(60):
    middle = (inside + outside) / 2.0
    if _permutation_p(a - middle, b, masks, exact) < alpha:
      outside = middle
    else:
      inside = middle
  return float(inside)


def permutation_test(a: Sequence[float], b: Sequence[float], max_exact: int = 50000,
                     resamples: int = 20000, seed: int = 0) -> dict[str, Any]:
  """Across seeds: a two-sided permutation test of mean(a) - mean(b), with the 95%
  interval that inverts it.

  Exact (every relabelling of the pooled runs) when there are at most
  `max_exact` relabellings, else `resamples` random ones. With 5 seeds per
  side the smallest possible p is 2/252 = 0.008; with 3 it is 0.1, which is
  why the suite uses at least 5. The interval is the set of shifts d for which
  the same test of (a - d) against b does not reject at 0.05, so it leaves
  out 0 exactly when p < 0.05 and cannot disagree with the verdict (Welch's
  t interval, which can, is kept beside it as `welch_ci`).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f"a permutation test needs two runs a side: {len(a)} and {len(b)}")
  masks, exact = _relabellings(len(a) + len(b), len(a), max_exact, resamples, seed)
  how = (f"exact, {len(masks)} relabellings" if exact else
         f"{resamples} random relabellings")
  ci = (_shift_bound(a, b, masks, exact, -1, ALPHA), _shift_bound(a, b, masks, exact, +1, ALPHA))
  return dict(test=f"permutation test across seeds ({len(a)} vs {len(b)} runs; {how})",
              p=_permutation_p(a, b, masks, exact), effect=float(a.mean() - b.mean()),
              ci=ci, welch_ci=welch_interval(a, b), n=(len(a), len(b)))


def above_chance(successes: int, n: int, rate: float) -> bool:
  """Does `successes` of `n` beat the chance `rate` (a fraction)? One-sided exact
  binomial test at 0.05: whether a run learned its task at all."""
  from scipy import stats as scipy_stats
  if n == 0:
    return False
  rate = min(max(rate, 0.0), 1.0)
  return bool(scipy_stats.binomtest(successes, n, rate, alternative="greater").pvalue < ALPHA)


def binomial_test(successes: int, n: int, rate: float) -> dict[str, Any]:
  """Is a success rate above (or below) a chance rate? Exact two-sided binomial test;
  the effect is the observed minus the chance rate in points, with a Wilson interval."""
  from scipy import stats as scipy_stats
  if n == 0:
    return dict(test="exact binomial test", p=1.0, effect=float("nan"),
                ci=(float("nan"), float("nan")), n=0)
  p = scipy_stats.binomtest(successes, n, min(max(rate, 0.0), 1.0)).pvalue
  z, phat = 1.96, successes / n
  centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return dict(test=f"exact binomial test against the chance rate {100 * rate:.1f}%",
              p=float(p), effect=100.0 * (phat - rate),
              ci=(100.0 * (centre - half - rate), 100.0 * (centre + half - rate)), n=n)


def claim(name: str, control: str, result: dict[str, Any], expected_sign: int = 1,
          numbers: str = "") -> dict[str, Any]:
  """One row of the claims table: what is claimed, against which control, the test,
  the effect with its 95% interval, p and the verdict."""
  bound = lambda x: round(float(x), 3) if math.isfinite(x) else None  # noqa: E731
  return dict(claim=name, control=control, verdict=verdict(result["p"], result["effect"],
                                                           expected_sign),
              test=result["test"], effect=round(float(result["effect"]), 3),
              ci=[bound(x) for x in result["ci"]], p=float(result["p"]),
              numbers=numbers)


def untestable(name: str, control: str, reason: str, numbers: str = "") -> dict[str, Any]:
  """A claims-table row whose verdict is "not testable here: <reason>"."""
  return dict(claim=name, control=control, verdict=not_testable(reason), test=None,
              effect=None, ci=None, p=None, numbers=numbers)


def effect_text(c: dict[str, Any]) -> str:
  """A claim's effect as "+3.1 [0.4, 5.8], p = 0.008" (or "-"; an interval edge that
  no shift reaches reads "-inf" / "+inf")."""
  if c.get("effect") is None:
    return "-"
  p = c["p"]
  lo, hi = ("-inf" if c["ci"][0] is None else f"{c['ci'][0]:+.1f}",
            "+inf" if c["ci"][1] is None else f"{c['ci'][1]:+.1f}")
  return (f"{c['effect']:+.1f} [{lo}, {hi}], p = {p:.3g}" if p >= 0.001 else
          f"{c['effect']:+.1f} [{lo}, {hi}], p < 0.001")


def random_answer_success_rate(baselines: Sequence[float], examples: int, classes: int,
                               trials: int = 20000, seed: int = 0) -> float:
  """The success rate (%) that a prompt answering uniformly at random among `classes`
  would reach under recycling's rule (beat the target's strongest zero-shot
  baseline, in % of `examples`), simulated once per case (one baseline per case)."""
  rng = np.random.RandomState(seed)
  rate_of: dict[float, float] = {}  # cases that share a baseline share one simulation
  for best in baselines:
    if best not in rate_of:
      accuracy = 100.0 * rng.binomial(examples, 1.0 / classes, size=trials) / examples
      rate_of[best] = float(np.mean(accuracy > best))
  rates = [rate_of[best] for best in baselines]
  return 100.0 * float(np.mean(rates)) if rates else float("nan")


def pm(group: dict[str, Any]) -> str:
  """An aggregated group as "mean +- sd"."""
  return f"{group['mean']:.1f} +- {group['std']:.1f}"
