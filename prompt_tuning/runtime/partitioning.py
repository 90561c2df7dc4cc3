"""Meshes and logical-axis partitioning (T5X's conventions).

Every parameter and key activation carries logical axis names; one rules
table maps them to the mesh axes `data` and `model`. The prompt axes stay
replicated. A dimension that the mesh axis does not divide is replicated
instead (logged), so small models run on any mesh.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from prompt_tuning import registry

log = logging.getLogger(__name__)

# T5X's standard rules (data + model parallelism) plus this project's axes.
STANDARD_RULES: tuple[tuple[str, Optional[str]], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("length", None),
    ("layers", None),
    ("prompt", None),
    ("prompt_embed", None),
    # Multi-task prompts, prompt banks, hypernetworks and prompt generators:
    # small, replicated.
    ("tasks", None),
    ("prompts", None),
    ("task_dim", None),
    ("rank", None),
    ("layer_dim", None),
    ("hyper_in", None),
    ("hyper_hidden", None),
    ("hyper_out", None),
    ("generator", None),
    ("attention_bottleneck", None),
)


@registry.configurable
@dataclasses.dataclass(frozen=True)
class PartitioningConfig:
  """How devices form the (data, model) mesh; bindable from gin.

  Exactly one of: `mesh_shape` (data, model); `model_parallel_submesh` (T5X:
  the product of its entries is the model-parallel size); `num_partitions`
  (the model-parallel size; data parallelism takes the rest).
  """
  num_partitions: int = 1
  model_parallel_submesh: Optional[tuple[int, ...]] = None
  mesh_shape: Optional[tuple[int, int]] = None
  num_devices: Optional[int] = None  # use the first N devices (default: all)
  logical_axis_rules: tuple[tuple[str, Optional[str]], ...] = STANDARD_RULES


def make_mesh(cfg: PartitioningConfig = PartitioningConfig(),
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  if cfg.num_devices is not None:
    if not 0 < cfg.num_devices <= len(devices):
      raise ValueError(f"num_devices={cfg.num_devices}; {len(devices)} devices are available")
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))[:cfg.num_devices]
  n = len(devices)
  if cfg.mesh_shape is not None:
    data, model = cfg.mesh_shape
  else:
    model = (math.prod(cfg.model_parallel_submesh) if cfg.model_parallel_submesh
             else cfg.num_partitions)
    if model <= 0 or n % model:
      raise ValueError(f"Model-parallel size {model} does not divide the {n} devices")
    data = n // model
  if data * model != n:
    raise ValueError(f"Mesh shape ({data}, {model}) needs {data * model} devices; "
                     f"{n} are available")
  # Devices in id order, each process's devices contiguous along `data`.
  ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(ordered).reshape(data, model), ("data", "model"))


def _mesh_axis(logical: Optional[str], rules) -> Optional[str]:
  for name, axis in rules:
    if name == logical:
      return axis
  return None


def sharding_for(shape: Sequence[int], logical_spec: Optional[P], mesh: Mesh,
                 rules=STANDARD_RULES) -> NamedSharding:
  """The NamedSharding of one array; undivisible dimensions are replicated."""
  if logical_spec is None:
    return NamedSharding(mesh, P())
  axes = []
  for dim, logical in zip(shape, tuple(logical_spec)):
    axis = _mesh_axis(logical, rules)
    if axis is not None and dim % mesh.shape[axis]:
      log.info("Replicating a dimension of %d (%s): mesh axis %s has %d devices", dim,
               logical, axis, mesh.shape[axis])
      axis = None
    axes.append(axis)
  return NamedSharding(mesh, P(*axes))


def tree_shardings(shapes: Any, logical_specs: Any, mesh: Mesh, rules=STANDARD_RULES) -> Any:
  """NamedShardings for a tree of shapes given its tree of logical PartitionSpecs."""
  return jax.tree.map(lambda s, spec: sharding_for(s.shape, spec, mesh, rules), shapes,
                      logical_specs, is_leaf=lambda x: isinstance(x, P) or x is None)


def optimizer_shardings(opt_shapes: Any, params: Any, param_shardings: Any,
                        mesh: Mesh) -> Any:
  """Shardings for optimizer state: a leaf that mirrors a parameter (its path
  ends with the parameter's path and the shapes agree) is sharded like it;
  counts and factored statistics are replicated."""
  from prompt_tuning import trees as tree_lib
  flat_params = tree_lib.flatten(params)
  flat_sh = tree_lib.flatten(param_shardings)
  by_suffix = {tuple(k.split("/")): k for k in flat_params}

  def choose(path, leaf):
    keys = tuple(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))))
                 for p in path)
    for n in range(len(keys), 0, -1):
      name = by_suffix.get(keys[-n:])
      if name is not None and tuple(flat_params[name].shape) == tuple(leaf.shape):
        return flat_sh[name]
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(choose, opt_shapes)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, ...] arrays: the batch split over `data`, replicated over `model`."""
  return NamedSharding(mesh, P("data"))


def host_to_global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array that every process holds whole."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def local_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """A global batch from every process's identical copy of the whole batch."""
  sharding = batch_sharding(mesh)
  return {k: host_to_global(v, sharding if np.ndim(v) else replicated(mesh))
          for k, v in batch.items()}


def logical_rules_context(cfg: PartitioningConfig):
  """Flax's context for `nn.with_logical_constraint` on activations."""
  return nn.logical_axis_rules(cfg.logical_axis_rules)
