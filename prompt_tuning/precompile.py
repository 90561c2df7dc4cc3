"""`prompt-tuning precompile`: compile a sharded train step from shapes alone.

The analogue of T5X's precompile: the model, optimizer state and batch exist
only as abstract shapes with shardings, so a T5 1.1 XXL step for a 64-device
mesh compiles on a laptop without allocating a single weight. Reports the
per-device bytes of parameters, optimizer state and XLA's temporaries.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import soft
from prompt_tuning.train import freezing, loop, optimizers
from prompt_tuning.runtime import partitioning


def _per_device_bytes(abstract_tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def precompile(model_config: T5Config, prompt_length: Optional[int] = 100,
               batch_size: int = 32,
               task_feature_lengths: Mapping[str, int] = {"inputs": 512, "targets": 16},
               partitioning_config: partitioning.PartitioningConfig = (
                   partitioning.PartitioningConfig()),
               trainable_rules: Optional[freezing.Rules] = None,
               optimizer: Optional[optax.GradientTransformation] = None) -> dict[str, Any]:
  """Lowers and compiles the train step; returns per-device memory figures (bytes).

  `prompt_length=None` with `trainable_rules=FULL_FINETUNING_RULES` compiles
  full fine-tuning of the same model for comparison.
  """
  mesh = partitioning.make_mesh(partitioning_config)
  rules = partitioning_config.logical_axis_rules
  prompt = soft.SoftPrompt(length=prompt_length) if prompt_length else None
  model = T5(model_config, encoder_prompt=prompt)
  trainable_rules = trainable_rules or (freezing.PROMPT_TUNING_RULES if prompt
                                        else freezing.FULL_FINETUNING_RULES)
  optimizer = optimizer or optimizers.prompt_tuning_adafactor()
  shapes, specs = params_lib.abstract_params(model)
  shardings = partitioning.tree_shardings(shapes, specs, mesh, rules)
  mask = freezing.trainable_mask(shapes, trainable_rules)
  t_shapes, f_shapes = freezing.split(shapes, mask)
  t_sh, f_sh = freezing.split(shardings, mask)
  with_sh = lambda tree, sh: jax.tree.map(  # noqa: E731
      lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), tree, sh)
  trainable, frozen = with_sh(t_shapes, t_sh), with_sh(f_shapes, f_sh)
  opt_shapes = jax.eval_shape(optimizer.init, t_shapes)
  opt_sh = partitioning.optimizer_shardings(opt_shapes, t_shapes, t_sh, mesh)
  opt_state = with_sh(opt_shapes, opt_sh)
  batch_sh = partitioning.batch_sharding(mesh)
  lin, lt = task_feature_lengths["inputs"], task_feature_lengths["targets"]
  batch = {
      "encoder_input_tokens": jax.ShapeDtypeStruct((batch_size, lin), jnp.int32, sharding=batch_sh),
      "decoder_input_tokens": jax.ShapeDtypeStruct((batch_size, lt), jnp.int32, sharding=batch_sh),
      "decoder_target_tokens": jax.ShapeDtypeStruct((batch_size, lt), jnp.int32, sharding=batch_sh),
      "decoder_loss_weights": jax.ShapeDtypeStruct((batch_size, lt), jnp.float32,
                                                   sharding=batch_sh),
  }
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioning.replicated(mesh))
  train_step = loop.jit_train_step(model, optimizer, 1e-4, False, 0, mesh, t_sh, opt_sh, f_sh)
  with mesh, partitioning.logical_rules_context(partitioning_config):
    lowered = train_step.lower(trainable, opt_state, frozen, batch, step)
  compiled = lowered.compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(
      devices=mesh.size, mesh=dict(mesh.shape),
      parameters=params_lib.param_count(shapes),
      trainable_parameters=params_lib.param_count(t_shapes),
      per_device_bytes=dict(
          frozen_params=_per_device_bytes(frozen),
          trainable_params=_per_device_bytes(trainable),
          optimizer_state=_per_device_bytes(opt_state),
          arguments=int(getattr(mem, "argument_size_in_bytes", 0)),
          outputs=int(getattr(mem, "output_size_in_bytes", 0)),
          temporaries=int(getattr(mem, "temp_size_in_bytes", 0)),
          generated_code=int(getattr(mem, "generated_code_size_in_bytes", 0))),
      flops_per_device=float((cost or {}).get("flops", 0.0)))
