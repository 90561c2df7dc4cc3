"""Builds the model and its parameters in two phases, the same way for every binary.

1. `abstract(spec)`: the model, every parameter's shape, dtype and sharding,
   and the trainable / frozen split. No I/O and no initializer runs: it is
   all precompile, the benchmarks or a shape question need.
2. `materialize(abstract_setup)`: reads each backbone array from the
   checkpoint once and places it (every host reads, each device keeps its
   slice); parameters the checkpoint cannot hold (the prompt modules') are
   initialized inside a jitted init whose unused outputs XLA drops. The
   prompt modules get what their initializers start from as an argument,
   an `InitContext` (the embedding table just read, the task's vocabulary).
   With `init_trainable=False` (eval and infer restoring a checkpoint) the
   trainable part stays abstract, a restore target, and no initializer runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax

from prompt_tuning import readers
from prompt_tuning import trees as tree_lib
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import base as prompt_base
from prompt_tuning.prompts import provenance
from prompt_tuning.runtime import partitioning
from prompt_tuning.runtime.specs import ModelSpec
from prompt_tuning.runtime import freezing


@dataclasses.dataclass(frozen=True)
class AbstractSetup:
  """Shapes and shardings only. Trees hold ShapeDtypeStructs with their sharding."""
  spec: ModelSpec
  model: T5
  mesh: Any
  mask: dict[str, bool]   # '/'-joined path -> trainable?
  trainable: Any
  frozen: Any

  @property
  def trainable_shardings(self) -> Any:
    return jax.tree.map(lambda s: s.sharding, self.trainable)

  @property
  def frozen_shardings(self) -> Any:
    return jax.tree.map(lambda s: s.sharding, self.frozen)


@dataclasses.dataclass
class Setup:
  """The placed parameters, split by the freezing rules."""
  abstract: AbstractSetup
  trainable: Any   # arrays, or the abstract tree when not initialized
  frozen: Any

  @property
  def model(self) -> T5:
    return self.abstract.model

  @property
  def trainable_shardings(self) -> Any:
    return self.abstract.trainable_shardings

  @property
  def frozen_shardings(self) -> Any:
    return self.abstract.frozen_shardings


def abstract(spec: ModelSpec, partitioning_config: partitioning.PartitioningConfig = (
    partitioning.PartitioningConfig()), mesh: Optional[Any] = None,
             require_trainable: bool = True) -> AbstractSetup:
  """Phase 1: model, shapes, shardings and trainable mask; reads nothing.

  `require_trainable`: training needs something trainable (inference not);
  it is ignored without a prompt module and default rules.
  """
  mesh = mesh or partitioning.make_mesh(partitioning_config)
  model = spec.module()
  shapes, specs = params_lib.abstract_params(model)
  if spec.trainable_rules is None and not spec.has_prompt:
    require_trainable = False
  mask = freezing.trainable_mask(shapes, spec.rules(), require_trainable)
  shardings = partitioning.tree_shardings(shapes, specs, mesh,
                                          partitioning_config.logical_axis_rules)
  placed = jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h),
                        shapes, shardings)
  trainable, frozen = freezing.split(placed, mask)
  return AbstractSetup(spec=spec, model=model, mesh=mesh, mask=mask, trainable=trainable,
                       frozen=frozen)


def _frozen_prompt_parts(model: Any, flat: dict[str, Any]) -> dict[str, Any]:
  """Frozen parts of prompt modules read from their own checkpoints (a separate
  reader encoder): the module names (sub-path, checkpoint, model to read it as)."""
  out = {}
  for name in ("encoder_prompt", "decoder_prompt"):
    module = getattr(model, name, None)
    for sub, path, as_model in getattr(module, "frozen_checkpoints", tuple)():
      for k, v in tree_lib.flatten(readers.load_params(path, as_model)).items():
        if f"{name}/{sub}/{k}" in flat:
          out[f"{name}/{sub}/{k}"] = v
  return out


def _with_init_context(model: T5, context: prompt_base.InitContext) -> T5:
  return model.clone(
      encoder_prompt=prompt_base.with_init_context(model.encoder_prompt, context),
      decoder_prompt=prompt_base.with_init_context(model.decoder_prompt, context))


def materialize(setup: AbstractSetup, seed: int = 0, init_trainable: bool = True,
                vocabulary: Optional[Any] = None) -> Setup:
  """Phase 2: the backbone read once from its checkpoint, the rest initialized.

  Args:
    seed: the initializers' seed.
    init_trainable: False leaves the trainable parameters the checkpoint
      lacks abstract (for a restore to fill) and runs no initializer for them.
    vocabulary: the task's input vocabulary, for initializers that embed
      text (class labels, a string).
  """
  flat = tree_lib.flatten(freezing.merge(setup.trainable, setup.frozen))
  path = setup.spec.checkpoint
  loaded: dict[str, Any] = {}
  host: dict[str, Any] = {}
  if path:
    prompt_paths = tuple(k for k in flat if prompt_base.PROMPT_PARAM.fullmatch(k))
    host = tree_lib.flatten(readers.load_params(path, setup.model, allow_missing=prompt_paths))
  host.update(_frozen_prompt_parts(setup.model, flat))
  missing = sorted(k for k in flat if k not in host)
  to_init = [k for k in missing if init_trainable or not setup.mask[k]]
  if to_init:
    # Initializers that start from the backbone (sampled vocabulary, class
    # labels) get the table just read; a host array, so only the rows they
    # take enter the compiled init.
    context = prompt_base.InitContext(embeddings=host.get(provenance.EMBEDDING),
                                      vocabulary=vocabulary, checkpoint=path,
                                      config=setup.spec.config)
    model = _with_init_context(setup.model, context)

    def init_missing(rng):
      flat_init = tree_lib.flatten(params_lib.init_params(model, rng))
      return {k: flat_init[k] for k in to_init}
    loaded.update(jax.jit(init_missing, out_shardings={k: flat[k].sharding for k in to_init})(
        jax.random.PRNGKey(seed)))
  for k, value in host.items():
    loaded[k] = partitioning.host_to_global(value, flat[k].sharding)
  host.clear()
  for k in missing:
    if k not in loaded:
      loaded[k] = flat[k]  # Abstract: a restore target.
  trainable, frozen = freezing.split(tree_lib.unflatten(loaded), setup.mask)
  return Setup(abstract=setup, trainable=trainable, frozen=frozen)


def build(spec: ModelSpec, partitioning_config: partitioning.PartitioningConfig = (
    partitioning.PartitioningConfig()), mesh: Optional[Any] = None, seed: int = 0,
          require_trainable: bool = True, init_trainable: bool = True,
          vocabulary: Optional[Any] = None) -> Setup:
  """Both phases."""
  return materialize(abstract(spec, partitioning_config, mesh, require_trainable), seed,
                     init_trainable, vocabulary)
