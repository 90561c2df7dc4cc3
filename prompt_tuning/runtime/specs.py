"""The grouped configs every binary takes: what the model is, and what the data is.

T5X's habit: `train`, `evaluate`, `infer` and `precompile` each take a
`ModelSpec`, a `DataSpec` and a `PartitioningConfig`, built once from gin, so
the binaries cannot disagree on what the model is.

    ModelSpec.config = %MODEL_CONFIG
    ModelSpec.checkpoint = %INITIAL_CHECKPOINT_PATH
    ModelSpec.encoder_prompt = %ENCODER_PROMPT
    train.model = @ModelSpec()
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn

from prompt_tuning import registry
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import base as prompt_base
from prompt_tuning.runtime import freezing


@registry.configurable
@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The model: backbone config and checkpoint, prompt modules, what trains.

  Attributes:
    config: the backbone's T5Config.
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
  config: T5Config
  checkpoint: Optional[str] = None
  encoder_prompt: Optional[nn.Module] = None
  decoder_prompt: Optional[nn.Module] = None
  trainable_rules: Optional[freezing.Rules] = None
  model_class: Optional[Callable[..., Any]] = None

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
