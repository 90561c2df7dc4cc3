"""Runs short training jobs on a given mesh and writes their results as JSON.

Launched by tests/test_sharding.py in subprocesses, because the number of
(virtual) devices is fixed when JAX starts:

  python -m tests.sharding_worker OUT.json BACKBONE MODEL_DIR STEPS MESH [MESH ...]
      MESH is "data,model", optionally "@N" (only the first N devices) and
      ":NAME" (the run folder under MODEL_DIR; default from the mesh), or
      "microbatches": one step with and without microbatches on several meshes
      (results["microbatches"], read by test_sharding's microbatch test; in this
      process, which has the 8 devices, rather than a process of its own)
  with PT_PROCESS_ID / PT_NUM_PROCESSES / PT_COORDINATOR set, joins a
  multi-process run (jax.distributed over gloo) first.
"""

import json
import os
import sys


def main(argv):
  out, backbone, model_dir_root, steps, *meshes = argv
  import jax
  if os.environ.get("PT_NUM_PROCESSES"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ["PT_COORDINATOR"],
                               num_processes=int(os.environ["PT_NUM_PROCESSES"]),
                               process_id=int(os.environ["PT_PROCESS_ID"]))
  import numpy as np
  import prompt_tuning.tasks  # noqa: F401
  from prompt_tuning.train import loop
  from prompt_tuning.runtime import partitioning
  from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, ModelSpec
  from prompt_tuning.train.specs import ReportSpec
  from tests.test_sharding import MODEL_CONFIG
  results = {}
  for spec in meshes:
    if spec == "microbatches":
      results[spec] = microbatch_prompts()
      continue
    mesh, _, name = spec.partition(":")
    shape, _, count = mesh.partition("@")
    data, model = (int(x) for x in shape.split(","))
    cfg = partitioning.PartitioningConfig(mesh_shape=(data, model),
                                          num_devices=int(count) if count else None)
    model_dir = os.path.join(model_dir_root, name or mesh.replace(",", "x").replace("@", "_on"))
    prompt = prompt_module(backbone)
    summary = loop.train(model_dir=model_dir, model=ModelSpec(MODEL_CONFIG, backbone, prompt),
                         data=DataSpec("synthetic_reverse_bare", {"inputs": 16, "targets": 8},
                                       8),
                         train_steps=int(steps), checkpoint=CheckpointSpec(period=int(steps)),
                         report=ReportSpec(log_period=1, progress=False),
                         partitioning_config=cfg)
    results[mesh] = dict(loss=summary["last_metrics"]["loss"], step=summary["step"],
                         start_step=summary["start_step"], devices=jax.device_count(),
                         processes=jax.process_count())
    if jax.process_index() == 0:
      prompt_file = os.path.join(model_dir, "prompts", f"step_{steps}",
                                 "encoder_prompt.prompt.npy")
      results[mesh]["prompt"] = np.load(prompt_file).tolist()
  if jax.process_index() == 0:
    with open(out, "w") as f:
      json.dump(results, f)


def microbatch_prompts() -> dict:
  """On 8 devices: the prompt after one step on several meshes, with and without
  microbatches, by "DATAxMODEL k=K"."""
  import jax
  import numpy as np
  from prompt_tuning.prompts import soft
  from prompt_tuning.runtime import partitioning
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import ModelSpec
  from prompt_tuning.train import loop, optimizers
  from tests.test_sharding import MODEL_CONFIG
  assert jax.device_count() == 8
  rng = np.random.RandomState(0)
  tgt = rng.randint(2, 384, size=(16, 6)).astype(np.int32)
  batch = dict(encoder_input_tokens=rng.randint(2, 384, size=(16, 12)).astype(np.int32),
               decoder_input_tokens=np.concatenate([np.zeros((16, 1), np.int32), tgt[:, :-1]],
                                                   1),
               decoder_target_tokens=tgt, decoder_loss_weights=(tgt > 0).astype(np.float32))
  spec = ModelSpec(MODEL_CONFIG, None, soft.SoftPrompt(length=4))
  opt = optimizers.prompt_tuning_adafactor()
  results = {}
  for shape, k in (((1, 1), 1), ((8, 1), 2), ((2, 4), 4)):
    config = partitioning.PartitioningConfig(mesh_shape=shape, num_devices=shape[0] * shape[1])
    mesh = partitioning.make_mesh(config)
    setup = setup_lib.build(spec, config, mesh, seed=0)
    opt_sh = partitioning.optimizer_shardings(jax.eval_shape(opt.init, setup.trainable),
                                              setup.trainable, setup.trainable_shardings, mesh)
    opt_state = jax.jit(opt.init, out_shardings=opt_sh)(setup.trainable)
    step = loop.jit_train_step(setup.model, opt, 1e-4, False, mesh, setup.trainable_shardings,
                               opt_sh, setup.frozen_shardings, partitioning_config=config,
                               num_microbatches=k)
    with mesh, partitioning.logical_rules_context(config):
      trainable, _, _ = step(setup.trainable, opt_state, setup.frozen,
                             partitioning.local_batch_to_global(batch, mesh), np.int32(1),
                             np.int32(0))
    results[f"{shape[0]}x{shape[1]} k={k}"] = np.asarray(
        jax.device_get(trainable["encoder_prompt"]["prompt"])).tolist()
  return results


def prompt_module(backbone):
  """The prompt every run trains: 4 positions of sampled vocabulary."""
  from prompt_tuning.prompts import initializers, soft
  return soft.SoftPrompt(length=4, init=initializers.sampled_vocab(first_n=259))


if __name__ == "__main__":
  main(sys.argv[1:])
