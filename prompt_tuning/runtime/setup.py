"""Builds the model and its parameters the same way for train, eval and infer.

The backbone comes from INITIAL_CHECKPOINT_PATH (T5X or Hugging Face) by
name; only parameters the checkpoint cannot hold (the prompt modules') are
initialized, inside a jitted init whose unused outputs XLA drops, so the
backbone is never randomly initialized when a checkpoint is given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning import readers
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning import trees as tree_lib
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.train import freezing
from prompt_tuning.runtime import partitioning


@dataclasses.dataclass
class ModelSetup:
  model: T5
  trainable: Any          # nested dict of the trainable leaves
  frozen: Any             # nested dict of the frozen leaves
  mask: dict[str, bool]   # '/'-joined path -> trainable?
  logical_specs: Any      # PartitionSpec tree of logical axis names
  mesh: Any               # the jax.sharding.Mesh everything lives on
  trainable_shardings: Any
  frozen_shardings: Any


def build(model_config: T5Config, initial_checkpoint_path: Optional[str],
          encoder_prompt: Optional[nn.Module] = None, decoder_prompt: Optional[nn.Module] = None,
          trainable_rules: Optional[freezing.Rules] = None,
          seed: int = 0, require_trainable: bool = True,
          partitioning_config: partitioning.PartitioningConfig = (
              partitioning.PartitioningConfig()),
          mesh: Optional[Any] = None) -> ModelSetup:
  """The model, its parameters split by the freezing rules, and their logical axes.

  Args:
    initial_checkpoint_path: the backbone. None initializes everything at
      random (pretraining from scratch); never used as a silent fallback.
    trainable_rules: default: the prompt modules train, nothing else; with
      no prompt module, everything is frozen (inference of the backbone).
    require_trainable: training needs something trainable; inference not.
    partitioning_config, mesh: where the parameters live (default: every
      device, data parallel). Each array is placed with the sharding its
      logical axes give; the checkpoint is read on every host and each device
      takes its slice.
  """
  mesh = mesh or partitioning.make_mesh(partitioning_config)
  rules = partitioning_config.logical_axis_rules
  model = T5(model_config, encoder_prompt=encoder_prompt, decoder_prompt=decoder_prompt)
  shapes, specs = params_lib.abstract_params(model)
  flat_shapes = tree_lib.flatten(shapes)
  if trainable_rules is None:
    has_prompt = encoder_prompt is not None or decoder_prompt is not None
    trainable_rules = freezing.PROMPT_TUNING_RULES if has_prompt else freezing.FROZEN_RULES
    require_trainable = require_trainable and has_prompt
  mask = freezing.trainable_mask(shapes, trainable_rules, require_trainable)
  shardings = tree_lib.flatten(partitioning.tree_shardings(shapes, specs, mesh, rules))
  if initial_checkpoint_path:
    prompt_paths = tuple(k for k in flat_shapes if checkpoints_lib.PROMPT_PATH.fullmatch(k))
    loaded = tree_lib.flatten(readers.load_params(initial_checkpoint_path, model,
                                                  allow_missing=prompt_paths))
    loaded = {k: partitioning.host_to_global(v, shardings[k]) for k, v in loaded.items()}
  else:
    loaded = {}
  missing = sorted(k for k in flat_shapes if k not in loaded)
  if missing:
    def init_missing(rng):
      flat = tree_lib.flatten(params_lib.init_params(model, rng))
      return {k: flat[k] for k in missing}
    # Only what the checkpoint lacks is initialized; XLA drops the rest.
    loaded.update(jax.jit(init_missing, out_shardings={k: shardings[k] for k in missing})(
        jax.random.PRNGKey(seed)))
  trainable, frozen = freezing.split(tree_lib.unflatten(loaded), mask)
  trainable_sh, frozen_sh = freezing.split(tree_lib.unflatten(shardings), mask)
  return ModelSetup(model=model, trainable=trainable, frozen=frozen, mask=mask,
                    logical_specs=specs, mesh=mesh, trainable_shardings=trainable_sh,
                    frozen_shardings=frozen_sh)
