"""Learning-rate schedules in T5X's terms (`utils.create_learning_rate_scheduler`).

A schedule is a product of factors named in one string, as T5X writes them:

    prompt_tuning_adafactor.learning_rate = @LearningRateSchedule()
    LearningRateSchedule.factors = 'constant * linear_warmup * rsqrt_decay'
    LearningRateSchedule.base_learning_rate = 1.0
    LearningRateSchedule.warmup_steps = 1000

Factors (step is the number of updates made before this one, 0 first):
  constant:       base_learning_rate
  linear_warmup:  min(1, step / warmup_steps)
  rsqrt_decay:    1 / sqrt(max(step, warmup_steps))
  rsqrt_normalized_decay: sqrt(warmup_steps) / sqrt(max(step, warmup_steps))
  linear_decay:   max(0, 1 - (step - warmup_steps) / decay_steps), 1 during warmup
  cosine_decay:   (1 + cos(pi * progress)) / 2 with the same progress, 1 during warmup

The default, 'constant' at 0.3, is the paper's (Lester et al. 2021, section 3).
Unlike T5X's cosine factor, which cycles every `steps_per_cycle`, decay here
ends at `decay_steps` past warmup and stays at its floor: a run that trains
on past the decay is not raised again without the user asking.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

from prompt_tuning import registry

FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay",
           "linear_decay", "cosine_decay")
_DECAYS = ("linear_decay", "cosine_decay")


@registry.configurable
@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
  """`schedule(step) -> learning rate`: T5X's factor product (see the module docstring).

  Attributes:
    factors: factor names joined by '*', e.g. 'constant * linear_warmup * rsqrt_decay'.
    base_learning_rate: the 'constant' factor.
    warmup_steps: the steps of linear warmup, and where rsqrt and linear or
      cosine decay start; it must not exceed TRAIN_STEPS (checked by train).
    decay_steps: how many steps linear or cosine decay takes to reach
      `min_learning_rate` after warmup (T5X's steps_per_cycle; typically
      TRAIN_STEPS - warmup_steps); required by those factors.
    min_learning_rate: the floor the rate never goes below.
  """
  factors: str = "constant"
  base_learning_rate: float = 0.3
  warmup_steps: int = 0
  decay_steps: Optional[int] = None
  min_learning_rate: float = 0.0

  def __post_init__(self):
    names = self.names
    unknown = [n for n in names if n not in FACTORS]
    if unknown or not names:
      raise ValueError(f"LearningRateSchedule.factors={self.factors!r}: unknown factor(s) "
                       f"{unknown}; expected '*'-joined names from {list(FACTORS)}")
    if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
      raise ValueError(f"LearningRateSchedule.warmup_steps must be an integer >= 0; got "
                       f"{self.warmup_steps!r}")
    needs_warmup = [n for n in names if n in ("linear_warmup", "rsqrt_normalized_decay")]
    if needs_warmup and self.warmup_steps == 0:
      raise ValueError(f"LearningRateSchedule factor {needs_warmup[0]} needs warmup_steps > 0")
    decays = [n for n in names if n in _DECAYS]
    if decays and (not isinstance(self.decay_steps, int) or self.decay_steps < 1):
      raise ValueError(f"LearningRateSchedule factor {decays[0]} needs decay_steps, a positive "
                       f"integer (e.g. TRAIN_STEPS - warmup_steps); got {self.decay_steps!r}")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(n.strip() for n in str(self.factors).split("*") if n.strip())

  def __call__(self, step):
    step = jnp.asarray(step, jnp.float32)
    warmup = float(self.warmup_steps)
    rate = jnp.ones((), jnp.float32)
    for name in self.names:
      if name == "constant":
        rate = rate * self.base_learning_rate
      elif name == "linear_warmup":
        rate = rate * jnp.minimum(1.0, step / warmup)
      elif name == "rsqrt_decay":
        rate = rate / jnp.sqrt(jnp.maximum(step, max(warmup, 1.0)))
      elif name == "rsqrt_normalized_decay":
        rate = rate * jnp.sqrt(warmup) / jnp.sqrt(jnp.maximum(step, warmup))
      else:
        progress = jnp.clip((step - warmup) / float(self.decay_steps), 0.0, 1.0)
        if name == "linear_decay":
          rate = rate * (1.0 - progress)
        else:
          rate = rate * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.maximum(rate, self.min_learning_rate)


def warmup_problem(schedule: object, train_steps: object) -> Optional[str]:
  """A warmup longer than the run (the rate would never reach its base), or None."""
  warmup = getattr(schedule, "warmup_steps", 0)
  if isinstance(train_steps, int) and isinstance(warmup, int) and warmup > train_steps:
    return (f"LearningRateSchedule.warmup_steps={warmup} exceeds TRAIN_STEPS={train_steps}; "
            "expected a warmup within the run")
  return None
