"""What every binary checks after its settings and before any work.

Validation (runtime/validation.py) checks values one by one. These checks
need the model's abstract shapes and a look at files, and still come before
MODEL_DIR is created and before a backbone array is read:

  1. the backbone's files: opening a checkpoint checks its metadata and that
     every data file is there and long enough (readers; DamagedBackboneError);
  2. MODEL_DIR's checkpoints, if any, hold this run's shapes
     (checkpoints.check_same_shapes; OtherRunError);
  3. the step fits in memory (memory.py; InsufficientMemoryError, or a warning
     with ALLOW_OVERSUBSCRIBE).

Each refusal is one line and leaves every file as it was.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax

from prompt_tuning import layout
from prompt_tuning import readers
from prompt_tuning.runtime import best_prompts
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.runtime import memory
from prompt_tuning.runtime import partitioning
from prompt_tuning.runtime import setup as model_setup


def check_backbone(path: Optional[str]) -> None:
  """Opens the checkpoint (cached for the read that follows): its files are checked."""
  if path:
    readers.open_checkpoint(path)


def check_train(*, model_dir: str, model: Any, data: Any, optimizer: Any,
                partitioning_config: Any = partitioning.PartitioningConfig(),
                use_dropout: Optional[bool] = None,
                memory_check: memory.MemoryCheck = memory.MemoryCheck()) -> None:
  """`train`'s checks, before MODEL_DIR is created or locked."""
  setup = model_setup.abstract(model, partitioning_config)
  check_backbone(model.checkpoint)
  checkpoints_lib.check_same_shapes(model_dir, setup.trainable)
  rate = float(getattr(model.config, "dropout_rate", 0.0) or 0.0)
  dropout = rate > 0 and use_dropout is not False
  estimate = memory.train_estimate(setup, jax.eval_shape(optimizer.init, setup.trainable),
                                   data.batch_size, data.feature_lengths, dropout)
  memory.check(estimate, memory_check, setup.mesh, "train step")


def check_inference(*, model_dir: Optional[str], model: Any, data: Any, inference: Any,
                    partitioning_config: Any = partitioning.PartitioningConfig()) -> None:
  """`evaluate`'s and `infer`'s checks, before the backbone or MODEL_DIR is read."""
  setup = model_setup.abstract(model, partitioning_config, require_trainable=False)
  check_backbone(model.checkpoint)
  decoding_config, checkpoint_step = inference.decoding, inference.checkpoint_step
  if (inference.restore and model_dir and jax.tree.leaves(setup.trainable)
      and checkpoint_step == "best"):
    best_prompts.check(model_dir, setup.trainable)
  elif inference.restore and model_dir and jax.tree.leaves(setup.trainable):
    steps = checkpoints_lib.committed_steps(model_dir)
    directory = layout.checkpoints_dir(model_dir)
    if not steps:
      raise FileNotFoundError(f"No checkpoint under {directory}; train first, or pass a "
                              "prompt file with RESTORE_CHECKPOINT=False")
    if checkpoint_step is not None and checkpoint_step not in steps:
      raise FileNotFoundError(f"No checkpoint for step {checkpoint_step} in {directory}; "
                              f"saved steps: {steps}")
    checkpoints_lib.check_same_shapes(model_dir, setup.trainable, checkpoint_step)
  beams = decoding_config.num_beams if decoding_config.method == "beam" else 1
  estimate = memory.inference_estimate(
      setup, data.batch_size, data.feature_lengths["inputs"],
      decoding_config.max_decode_length, beams, candidates=len(inference.class_labels or ()) or 1,
      target_length=int(data.feature_lengths.get("targets", 0)))
  memory.check(estimate, inference.memory, setup.mesh, "evaluation")


def check_serve(*, checkpoint: str, prompt_length: int, capacity: int,
                batch_size: int, input_length: int, decode_length: int, beams: int,
                target_length: int, relative_attention_max_distance: Optional[int] = None,
                allow_oversubscribe: bool = False) -> None:
  """`serve`'s checks, before the backbone's arrays are read."""
  from prompt_tuning.prompts import soft
  from prompt_tuning.runtime.specs import ModelSpec
  check_backbone(checkpoint)
  config = readers.config_for(checkpoint, relative_attention_max_distance)
  setup = model_setup.abstract(ModelSpec(config, None, soft.SoftPrompt(length=prompt_length)),
                               require_trainable=False)
  bank = capacity * prompt_length * config.emb_dim * 4
  estimate = memory.inference_estimate(setup, batch_size, input_length, decode_length, beams,
                                       candidates=1, target_length=target_length,
                                       extra_parameters=bank)
  memory.check(estimate, memory.MemoryCheck(allow_oversubscribe), setup.mesh, "server",
               override="--allow_oversubscribe")
