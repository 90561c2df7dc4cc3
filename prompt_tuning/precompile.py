"""`prompt-tuning precompile`: compile a sharded train step from shapes alone.

The analogue of T5X's precompile: the model, optimizer state and batch exist
only as abstract shapes with shardings, so a T5 1.1 XXL step for a 64-device
mesh compiles on a laptop without allocating a single weight. Reports the
per-device bytes of parameters, optimizer state and XLA's temporaries.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning import registry
from prompt_tuning.models import params as params_lib
from prompt_tuning.runtime import partitioning
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime import specs as specs_lib
from prompt_tuning.train import loop, optimizers


def _per_device_bytes(abstract_tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


@registry.configurable
def precompile(model: specs_lib.ModelSpec, data: specs_lib.DataSpec,
               partitioning_config: partitioning.PartitioningConfig = (
                   partitioning.PartitioningConfig()),
               optimizer: Optional[optax.GradientTransformation] = None) -> dict[str, Any]:
  """Lowers and compiles the train step; returns per-device memory figures (bytes).

  Uses only the abstract setup phase: nothing is read or allocated. A model
  spec with no prompt and `trainable_rules=FULL_FINETUNING_RULES` compiles
  full fine-tuning of the same model for comparison.
  """
  optimizer = optimizer or optimizers.prompt_tuning_adafactor()
  setup = model_setup.abstract(model, partitioning_config)
  mesh, trainable, frozen = setup.mesh, setup.trainable, setup.frozen
  t_sh, f_sh = setup.trainable_shardings, setup.frozen_shardings
  opt_shapes = jax.eval_shape(optimizer.init, trainable)
  opt_sh = partitioning.optimizer_shardings(opt_shapes, trainable, t_sh, mesh)
  opt_state = jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h),
                           opt_shapes, opt_sh)
  batch_sh = partitioning.batch_sharding(mesh)
  b = data.batch_size
  lin, lt = data.feature_lengths["inputs"], data.feature_lengths["targets"]

  def tokens(length, dtype=jnp.int32):
    return jax.ShapeDtypeStruct((b, length), dtype, sharding=batch_sh)
  batch = {"encoder_input_tokens": tokens(lin), "decoder_input_tokens": tokens(lt),
           "decoder_target_tokens": tokens(lt), "decoder_loss_weights": tokens(lt, jnp.float32)}
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioning.replicated(mesh))
  train_step = loop.jit_train_step(setup.model, optimizer, 1e-4, False, mesh, t_sh, opt_sh,
                                   f_sh, partitioning_config=partitioning_config)
  with mesh, partitioning.logical_rules_context(partitioning_config):
    lowered = train_step.lower(trainable, opt_state, frozen, batch, step, step)
  compiled = lowered.compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(
      devices=mesh.size, mesh=dict(mesh.shape),
      parameters=params_lib.param_count(trainable) + params_lib.param_count(frozen),
      trainable_parameters=params_lib.param_count(trainable),
      per_device_bytes=dict(
          frozen_params=_per_device_bytes(frozen),
          trainable_params=_per_device_bytes(trainable),
          optimizer_state=_per_device_bytes(opt_state),
          arguments=int(getattr(mem, "argument_size_in_bytes", 0)),
          outputs=int(getattr(mem, "output_size_in_bytes", 0)),
          temporaries=int(getattr(mem, "temp_size_in_bytes", 0)),
          generated_code=int(getattr(mem, "generated_code_size_in_bytes", 0))),
      flops_per_device=float((cost or {}).get("flops", 0.0)))
