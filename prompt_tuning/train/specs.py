"""The groups of settings only `train` takes: its loss, dropout, reports and checks.

Beside the specs every binary shares (`runtime.specs`: ModelSpec, DataSpec,
CheckpointSpec), `train` takes one object per concern instead of a dozen
loose values (T5X's habit). A run file binds each once:

    train.loss = @LossSpec()
    LossSpec.rank = @RankLoss()          # runs/rank_loss.gin
    train.report = @ReportSpec()
    ReportSpec.log_period = 100
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from prompt_tuning import registry
from prompt_tuning.runtime import memory as memory_lib
from prompt_tuning.runtime import specs as specs_lib
from prompt_tuning.train import rank as rank_lib
from prompt_tuning.train import wayward as wayward_lib

NON_FINITE_POLICIES = ("stop", "skip")


@registry.configurable
@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What the step minimizes.

  Attributes:
    z_loss: the weight of T5X's z-loss, z_loss * log(Z)^2 per target token,
      added to the token cross-entropy.
    rank: None trains on target tokens (cross-entropy + z-loss); a RankLoss
      trains on scored candidates (a _rank task's correct candidate against
      the wrong ones). On a _rank task the token loss trains on the correct
      candidate alone.
    wayward: keep the prompt near an embedded text (train/wayward.py); its
      term is logged as wayward_loss next to task_loss.
    num_microbatches: NUM_MICROBATCHES (T5X's Trainer.num_microbatches):
      compute each batch's gradient in this many parts, accumulated, with
      one optimizer update per batch; it must divide the per-device batch.
      The loss and update are the single-batch ones up to float rounding.
  """
  z_loss: float = 1e-4
  rank: Optional[rank_lib.RankLoss] = None
  wayward: Optional[wayward_lib.Wayward] = None
  num_microbatches: int = 1


@registry.configurable
@dataclasses.dataclass(frozen=True)
class DropoutSpec:
  """Whether training draws dropout masks, and with which PRNG.

  The rate itself is the model's (`T5Config.dropout_rate`); eval and infer
  never drop out.

  Attributes:
    enabled: None (default): dropout follows the model, on when the rate is
      above 0 (prompt_finetune.gin sets 0.1, T5X fine-tuning's rate). False
      turns it off whatever the rate (logged as a warning); True with a rate
      of 0 changes nothing.
    rng_impl: JAX's PRNG for the masks: "threefry2x32" (JAX's default), or
      "rbg" / "unsafe_rbg" (T5X's fast choice; much cheaper on CPU and TPU,
      not bit-compatible with threefry).
  """
  enabled: Optional[bool] = None
  rng_impl: str = "threefry2x32"


@registry.configurable
@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Evaluation during training (T5X's train_eval and infer_eval; train/evaluator.py).

  Attributes:
    period: EVAL_PERIOD: evaluate every `period` steps and at the last step;
      None (the default) never evaluates.
    split: the held-out split evaluated (the task's validation split).
    steps: EVAL_STEPS: teacher-forced batches (loss, token accuracy).
    max_examples: MAX_EVAL_EXAMPLES: examples decoded or ranked for the task's
      metrics; None reads the whole split.
    inference: how predictions are made (decoding, CLASS_LABELS), as for
      `prompt-tuning eval`; its checkpoint and example settings are unused.
    early_stopping_patience: EARLY_STOPPING_PATIENCE: stop after this many
      evaluations in a row without an improvement of the best metric
      (CheckpointSpec.best_metric) by more than `min_delta`; None: never.
    min_delta: MIN_DELTA, the smallest change that counts as an improvement.
  """
  period: Optional[int] = None
  split: str = "validation"
  steps: int = 20
  max_examples: Optional[int] = None
  inference: specs_lib.InferenceSpec = specs_lib.InferenceSpec()
  early_stopping_patience: Optional[int] = None
  min_delta: float = 0.0


@registry.configurable
@dataclasses.dataclass(frozen=True)
class ReportSpec:
  """What the run reports and measures while and after it trains.

  Nothing here changes a training step; only evaluation's early stopping
  (`EvalSpec.early_stopping_patience`, off by default) can end a run early.

  Attributes:
    log_period: write the metrics (loss, accuracy, steps/s, ...) every
      `log_period` steps, and at each checkpoint; None (the default) gives
      every run at least 10 points: min(100, max(1, train_steps // 10)).
    progress: a progress bar on the terminal (process 0 only); when the
      output is not a terminal (a log file), a line every `log_period` steps
      instead.
    frozen_digest: also record a SHA-256 of the frozen parameters as they are
      at the end in the summary (an integrity check; it copies the backbone
      to the host).
    evaluation: evaluation on a held-out split every EVAL_PERIOD steps
      (`EvalSpec`); off by default.
  """
  log_period: Optional[int] = None
  progress: bool = True
  frozen_digest: bool = False
  evaluation: EvalSpec = EvalSpec()

  def period(self, train_steps: int) -> int:
    """The metrics' period of a run of `train_steps` steps."""
    if self.log_period is not None:
      return self.log_period
    return min(100, max(1, int(train_steps) // 10))


@registry.configurable
@dataclasses.dataclass(frozen=True)
class ChecksSpec:
  """What the run refuses, before work and at every step.

  Attributes:
    on_non_finite: a step with a NaN/Inf loss or update changes nothing; then
      "stop" raises NonFiniteLossError naming the step (the last good
      checkpoint stays the latest), "skip" goes on and counts it.
    max_encoder_length: if set, the encoder length budget: the prompt plus
      TASK_FEATURE_LENGTHS['inputs'] must fit in it.
    memory: the memory check before any work (runtime/memory.py): a run
      whose estimate exceeds what is available is refused, unless
      `allow_oversubscribe` (ALLOW_OVERSUBSCRIBE).
  """
  on_non_finite: str = "stop"
  max_encoder_length: Optional[int] = None
  memory: memory_lib.MemoryCheck = memory_lib.MemoryCheck()

  def __post_init__(self):
    if self.on_non_finite not in NON_FINITE_POLICIES:
      raise ValueError(f"ChecksSpec.on_non_finite={self.on_non_finite!r}; expected 'stop' or "
                       "'skip'")
