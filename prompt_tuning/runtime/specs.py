"""The grouped configs the binaries take: model, data, checkpoints, inference.

T5X's habit: `train`, `evaluate`, `infer` and `precompile` each take a
`ModelSpec`, a `DataSpec` and a `PartitioningConfig`, built once from gin, so
the binaries cannot disagree on what the model is. `train` takes its
checkpoint settings as a `CheckpointSpec`; `evaluate` and `infer` (and the
research code, through `evaluation.predict`) take an `InferenceSpec`. A run
file binds each spec once:

    ModelSpec.config = %MODEL_CONFIG
    ModelSpec.checkpoint = %INITIAL_CHECKPOINT_PATH
    ModelSpec.encoder_prompt = %ENCODER_PROMPT
    train.model = @ModelSpec()
    train.checkpoint = @CheckpointSpec()
    CheckpointSpec.period = %CHECKPOINT_PERIOD
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn

from prompt_tuning import decoding as decoding_lib
from prompt_tuning import registry
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import base as prompt_base
from prompt_tuning.runtime import freezing
from prompt_tuning.runtime import memory as memory_lib


@registry.configurable
@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The model: backbone config and checkpoint, prompt modules, what trains.

  Attributes:
    config: the backbone's T5Config; None takes the one recorded with the
      checkpoint (a Hugging Face config.json, this project's config.json, a
      T5X run's config.gin; else its shapes). A config that contradicts a
      recorded architecture field is an error naming both values.
    checkpoint: the frozen backbone (INITIAL_CHECKPOINT_PATH): a T5X
      checkpoint or a Hugging Face folder; None initializes everything at
      random (pretraining from scratch), never as a silent fallback.
    encoder_prompt, decoder_prompt: modules on the prompt seam (or None).
    trainable_rules: the freezing table; None means the prompt modules train
      and nothing else (everything frozen when there is no prompt module;
      frozen parts a prompt module declares, `frozen_patterns()`, stay frozen).
    model_class: the model to build, T5 or a wrapper with T5's interface
      and parameter names (`@InputDependentT5`, `@FusionInDecoderT5`,
      `@TextualRecursionT5`, `@NeuralRecursionT5`); None is T5.
  """
  config: Optional[T5Config] = None
  checkpoint: Optional[str] = None
  encoder_prompt: Optional[nn.Module] = None
  decoder_prompt: Optional[nn.Module] = None
  trainable_rules: Optional[freezing.Rules] = None
  model_class: Optional[Callable[..., Any]] = None

  def __post_init__(self):
    if self.config is None and not self.checkpoint:
      raise ValueError("ModelSpec needs a config (MODEL_CONFIG, from a models/ gin file) or a "
                       "checkpoint (INITIAL_CHECKPOINT_PATH) to read it from")
    from prompt_tuning import readers
    if self.config is None:
      object.__setattr__(self, "config", readers.config_for(self.checkpoint))
      return
    if self.checkpoint:
      try:
        recorded, source = readers.recorded_config(self.checkpoint)
      except (OSError, ValueError):  # Missing or damaged: the setup's reader reports it.
        return
      wrong = readers.config_lib.contradictions(self.config, recorded, source)
      if wrong:
        raise ValueError("the model config contradicts the checkpoint's: " + "; ".join(wrong)
                         + ". Drop the binding (the recorded value is used) or fix it")

  @property
  def has_prompt(self) -> bool:
    return self.encoder_prompt is not None or self.decoder_prompt is not None

  @property
  def prompt_positions(self) -> int:
    """Positions the encoder prompt adds to the input sequence."""
    return prompt_base.num_positions(self.encoder_prompt)

  def rules(self) -> freezing.Rules:
    if self.trainable_rules is not None:
      return tuple(self.trainable_rules)
    if not self.has_prompt:
      return freezing.FROZEN_RULES
    frozen = [pattern for m in (self.encoder_prompt, self.decoder_prompt)
              for pattern in getattr(m, "frozen_patterns", tuple)()]
    return tuple((pattern, False) for pattern in frozen) + tuple(freezing.PROMPT_TUNING_RULES)

  def module(self) -> T5:
    """The Flax T5 with the prompt modules plugged in (sized for this backbone)."""
    return (self.model_class or T5)(self.config,
              encoder_prompt=prompt_base.for_model(self.encoder_prompt, self.config),
              decoder_prompt=prompt_base.for_model(self.decoder_prompt, self.config))

  def replace(self, **changes) -> "ModelSpec":
    return dataclasses.replace(self, **changes)


@registry.configurable
@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The data: a seqio task or mixture, its lengths, split, batch size and seed.

  Attributes:
    task: MIXTURE_OR_TASK_NAME, a registered seqio task or mixture.
    feature_lengths: TASK_FEATURE_LENGTHS, e.g. {'inputs': 512, 'targets': 16}
      (the encoder prompt adds its positions to 'inputs').
    batch_size: global batch size (all hosts together).
    split: the split read.
    seed: the data order's seed (the order is a pure function of it).
  """
  task: str
  feature_lengths: Mapping[str, int]
  batch_size: int
  split: str = "train"
  seed: int = 0

  def replace(self, **changes) -> "DataSpec":
    return dataclasses.replace(self, **changes)


@registry.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  """How `train` saves and resumes: T5X's CheckpointConfig, for what changes.

  A checkpoint holds the trainable parameters, their optimizer state, the step
  and the data position (the frozen backbone is re-read from ModelSpec's
  checkpoint). New settings join as fields with defaults, so a run file that
  binds some of them keeps working.

  Attributes:
    period: save every `period` steps (CHECKPOINT_PERIOD), and at the last step.
    keep: keep the newest `keep` checkpoints; None keeps them all.
    restore_fallback: if the latest checkpoint is damaged (a file missing or
      truncated), set it aside and resume from the previous good one instead
      of stopping with the damaged file's name (needs `keep` of None or >= 2).
    best_metric: BEST_METRIC: with evaluation during training on, the
      inference metric whose best value keeps the prompt in MODEL_DIR/best/;
      None is the task's first metric.
    best_mode: BEST_MODE: "max" (accuracy, F1, ...) or "min" (a loss).
  """
  period: int = 1000
  keep: Optional[int] = None
  restore_fallback: bool = False
  best_metric: Optional[str] = None
  best_mode: str = "max"


@registry.configurable
@dataclasses.dataclass(frozen=True)
class InferenceSpec:
  """What `evaluate` and `infer` restore and how they predict.

  Attributes:
    checkpoint_step: the step to restore (CHECKPOINT_STEP); None, the latest.
    restore: restore MODEL_DIR's checkpoint (RESTORE_CHECKPOINT); False
      predicts with the prompts as their initializers give them (a prompt
      file, or no prompt).
    decoding: how targets are decoded (DECODING_CONFIG).
    class_labels: rank classification (RANK_CLASSIFICATION_LABELS): score
      each label as the target and predict the best one, instead of decoding.
    max_examples: read at most this many examples of the split.
    ensemble_prompts: N > 0 runs a PromptBank of N prompts as an ensemble
      (NUM_PROMPTS), combined by `ensemble_method`: "majority_vote" (Lester
      et al. 2021, section 7) or "mean_log_prob".
    memory: the memory check before any work (runtime/memory.py): a run
      whose estimate exceeds what is available is refused, unless
      `allow_oversubscribe` (ALLOW_OVERSUBSCRIBE).
  """
  checkpoint_step: Optional[int] = None
  restore: bool = True
  decoding: decoding_lib.DecodingConfig = decoding_lib.DecodingConfig()
  class_labels: Optional[Sequence[str]] = None
  max_examples: Optional[int] = None
  ensemble_prompts: int = 0
  ensemble_method: str = "majority_vote"
  memory: memory_lib.MemoryCheck = memory_lib.MemoryCheck()

  def replace(self, **changes) -> "InferenceSpec":
    return dataclasses.replace(self, **changes)
