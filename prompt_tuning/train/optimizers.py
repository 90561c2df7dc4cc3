"""Optimizers: the paper's Adafactor by default; any optax transform from gin."""

from __future__ import annotations

from typing import Any, Callable, Union

import optax

from prompt_tuning import registry
from prompt_tuning import trees as tree_lib

Schedule = Union[float, Callable[[Any], Any]]


@registry.configurable
def prompt_tuning_adafactor(learning_rate: Schedule = 0.3, decay_rate: float = 0.8,
                            weight_decay_rate: float = 1e-5,
                            clipping_threshold: float = 1.0) -> optax.GradientTransformation:
  """Lester et al. (2021): Adafactor, constant 0.3, decay 0.8, no parameter scaling, wd 1e-5.

  `learning_rate` is a number or a schedule, e.g. T5X's warmup and decay
  (`@LearningRateSchedule()`, train/schedules.py). The rate of each update is
  in the optimizer state, so every logged step carries it (learning_rate).

  Equal arguments give the same transformation object (it is stateless), so
  train steps built on it are shared by the runs of one process
  (`train.loop.jit_train_step`).
  """
  args = (learning_rate, decay_rate, weight_decay_rate, clipping_threshold)
  return _ADAFACTORS.get(args, lambda: _adafactor(*args))  # an unhashable schedule: a new one


_ADAFACTORS = tree_lib.SharedCache(maxsize=16)


def _adafactor(learning_rate: Schedule, decay_rate: float, weight_decay_rate: float,
               clipping_threshold: float) -> optax.GradientTransformation:
  # Only the learning rate is injected (so it can be logged); adafactor
  # branches on its other numbers, which must stay static.
  static = ("min_dim_size_to_factor", "decay_rate", "decay_offset", "clipping_threshold",
            "weight_decay_rate", "eps", "multiply_by_parameter_scale", "factored")
  transform = optax.inject_hyperparams(optax.adafactor, static_args=static)(
      learning_rate=learning_rate, decay_rate=decay_rate, multiply_by_parameter_scale=False,
      weight_decay_rate=weight_decay_rate, clipping_threshold=clipping_threshold)
  scheduled = _Scheduled(*transform)
  scheduled.learning_rate = learning_rate
  return scheduled


class _Scheduled(optax.GradientTransformationExtraArgs):
  """An optax transformation that remembers its learning rate or schedule.

  It is still (init, update), equal to the transformation it wraps; train
  reads the schedule to refuse a warmup longer than the run before any work.
  """


def learning_rate_of(optimizer: Any) -> Schedule | None:
  """The learning rate or schedule `prompt_tuning_adafactor` was given; None if unknown."""
  return getattr(optimizer, "learning_rate", None)


def current_learning_rate(opt_state: Any) -> Any:
  """The learning rate inside an `inject_hyperparams` state, or None."""
  for state in _walk(opt_state):
    hyper = getattr(state, "hyperparams", None)
    if isinstance(hyper, dict) and "learning_rate" in hyper:
      return hyper["learning_rate"]
  return None


def _walk(state):
  yield state
  if isinstance(state, (tuple, list)):
    for s in state:
      yield from _walk(s)
  for attr in ("inner_state", "inner_states"):
    inner = getattr(state, attr, None)
    if inner is not None:
      yield from _walk(inner if not isinstance(inner, dict) else tuple(inner.values()))
