"""The training loop, top to bottom: model, data, state, jitted step, checkpoints, logs.

`train(model=ModelSpec, data=DataSpec, checkpoint=CheckpointSpec, ...)` is the
function the `prompt-tuning train` binary binds with gin (T5X's macros:
MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS, BATCH_SIZE,
INITIAL_CHECKPOINT_PATH, CHECKPOINT_PERIOD, ...). Prompt tuning and full
fine-tuning are the same code; only the freezing rules differ.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
import optax

from prompt_tuning import registry
from prompt_tuning import trees as tree_lib
from prompt_tuning.prompts import provenance
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.runtime import data as data_lib
from prompt_tuning.runtime import faults
from prompt_tuning import layout
from prompt_tuning.runtime import lock as lock_lib
from prompt_tuning.runtime import preflight
from prompt_tuning.runtime import preemption
from prompt_tuning.runtime import validation
from prompt_tuning.runtime import metrics as metrics_lib
from prompt_tuning.runtime import partitioning
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime import specs as specs_lib
from prompt_tuning.train import optimizers
from prompt_tuning.train import best as best_lib
from prompt_tuning.train import evaluator as evaluator_lib
from prompt_tuning.train import rank_data
from prompt_tuning.train import schedules
from prompt_tuning.train import specs as train_specs
from prompt_tuning.train import step as step_lib
from prompt_tuning.train import wayward as wayward_lib

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """A step produced a NaN or Inf loss or update."""


@registry.configurable
def train(*, model_dir: str, model: specs_lib.ModelSpec, data: specs_lib.DataSpec,
          train_steps: int, optimizer: Optional[optax.GradientTransformation] = None,
          seed: int = 0,
          checkpoint: specs_lib.CheckpointSpec = specs_lib.CheckpointSpec(),
          loss: train_specs.LossSpec = train_specs.LossSpec(),
          dropout: train_specs.DropoutSpec = train_specs.DropoutSpec(),
          report: train_specs.ReportSpec = train_specs.ReportSpec(),
          checks: train_specs.ChecksSpec = train_specs.ChecksSpec(),
          partitioning_config: partitioning.PartitioningConfig = (
              partitioning.PartitioningConfig())) -> dict[str, Any]:
  """Trains, resuming from MODEL_DIR's latest checkpoint if there is one.

  Args:
    model: the backbone, its checkpoint, the prompt modules and what trains.
    data: the task, feature lengths, split, global batch size and data seed.
    train_steps: the step to train to (TRAIN_STEPS), counting resumed steps.
    optimizer: None is the paper's Adafactor (`prompt_tuning_adafactor`), at
      a constant 0.3 unless given a `LearningRateSchedule` (T5X's warmup and
      decays); each logged step carries its learning_rate.
    seed: the initializers' and dropout's seed.
    checkpoint: how often to save, how many to keep, and whether a damaged
      latest checkpoint falls back to the previous one.
    loss: token cross-entropy with z-loss, or a rank loss; the wayward term.
    dropout: whether dropout follows the model's rate, and its PRNG.
    report: the metrics' period, the progress bar, the frozen digest, and
      evaluation on a held-out split every EVAL_PERIOD steps (EvalSpec:
      MODEL_DIR/train_eval/ and infer_eval/); off by default.
    checks: what a non-finite step does; the encoder length budget.
    partitioning_config: the (data, model) mesh and logical-axis rules. Every
      process reads the same global batches and its devices take their rows,
      so results do not depend on the number of processes or devices.

  Returns:
    a summary: final step, last logged metrics, checkpoint and backbone bytes.
  """
  if not isinstance(loss, train_specs.LossSpec):  # A run file from before LossSpec.
    raise ValueError(f"train.loss takes @LossSpec(), not {type(loss).__name__}: bind "
                     "train.loss = @LossSpec() and LossSpec.rank = @RankLoss()")
  validation.check_train(  # Before anything is read or written.
      model_dir=model_dir, train_steps=train_steps, batch_size=data.batch_size,
      task_feature_lengths=data.feature_lengths, checkpoint=checkpoint,
      log_period=report.period(train_steps), initial_checkpoint_path=model.checkpoint,
      encoder_prompt=model.encoder_prompt, decoder_prompt=model.decoder_prompt)
  validation.check_data_spec(data)
  evaluation = report.evaluation
  if evaluation is not None and evaluation.period is not None:  # Its settings and the split.
    validation.raise_if(evaluator_lib.problems(evaluation))
    eval_task = data_lib.get_task_or_mixture(data.task)
    validation.raise_if(evaluator_lib.problems(evaluation, eval_task))
    metric_names = evaluator_lib.metric_names(eval_task, evaluation, data.feature_lengths)
    validation.raise_if([evaluator_lib.best_metric_problem(checkpoint, metric_names)])
    best_metric = checkpoint.best_metric or metric_names[0]
  validation.raise_if([validation.microbatch_problem(
      loss.num_microbatches, data.batch_size,
      partitioning.make_mesh(partitioning_config).shape["data"])])
  optimizer = optimizer or optimizers.prompt_tuning_adafactor()
  validation.raise_if([schedules.warmup_problem(optimizers.learning_rate_of(optimizer),
                                                train_steps)])
  # Backbone files, MODEL_DIR's shapes, memory: before MODEL_DIR is created.
  preflight.check_train(model_dir=model_dir, model=model, data=data, optimizer=optimizer,
                        partitioning_config=partitioning_config, use_dropout=dropout.enabled,
                        memory_check=checks.memory)

  # One writer per MODEL_DIR: the lock (which creates the folder) comes before
  # the backbone is read or anything is written, and is released however the
  # run ends.
  run_lock = lock_lib.acquire_for_run(model_dir)
  try:
    # Cheap checks first, then the model: abstract shapes, then the backbone read once.
    task = data_lib.get_task_or_mixture(data.task)
    data_lib.check_vocabulary(task, model.config.vocab_size)
    rank_task = rank_data.is_rank_task(task, data.split)
    if loss.rank is not None and not rank_task:
      raise ValueError(f"LossSpec.rank={loss.rank} needs a rank-classification task (a _rank "
                       f"variant, whose examples carry is_correct and rank_group); {data.task} "
                       "has none")
    data_lib.check_prompt_budget(model.prompt_positions, data.feature_lengths,
                                 checks.max_encoder_length)
    mesh = partitioning.make_mesh(partitioning_config)
    if data.batch_size % mesh.shape["data"]:
      raise ValueError(f"BATCH_SIZE={data.batch_size} is not divisible by the "
                       f"{mesh.shape['data']} data-parallel replicas of the mesh")
    setup = model_setup.build(model, partitioning_config, mesh, seed=seed,
                              vocabulary=data_lib.input_vocabulary(task))
    trainable, frozen = setup.trainable, setup.frozen
    # Every process joins the gather of a sharded table; the chief writes sidecars.
    exported = dict(backbone=provenance.params_fingerprint(model.config, frozen),
                    checkpoint=model.checkpoint, task=data.task)
    opt_shardings = partitioning.optimizer_shardings(
        jax.eval_shape(optimizer.init, trainable), trainable, setup.trainable_shardings, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(trainable)
    is_chief = jax.process_index() == 0

    # Resume.
    store = checkpoints_lib.CheckpointStore(model_dir, checkpoint.keep)
    start_step, data_position, meta = 0, 0, {}
    restored = store.restore(tree_lib.abstract(trainable), tree_lib.abstract(opt_state),
                             fallback=checkpoint.restore_fallback)
    if restored is not None:
      trainable, opt_state, meta = restored
      start_step, data_position = int(meta["step"]), int(meta["data_position"])
      log.info("Resumed from step %d (%s)", start_step, store.step_dir(start_step))
      # A kill between the commit and the export must not lose the .npy files.
      if is_chief:
        checkpoints_lib.export_prompts(model_dir, start_step, trainable, **exported)

    batches = _train_batches(data, data_position, rank_task, rank_loss=loss.rank is not None)
    vocabulary = task.output_features["inputs"].vocabulary
    objective = step_lib.Objective(rank_loss=loss.rank, wayward=wayward_lib.resolve(
        loss.wayward, trainable, frozen, vocabulary) if loss.wayward is not None else None)
    use_dropout = dropout_enabled(model.config, dropout.enabled)
    train_step = jit_train_step(setup.model, optimizer, loss.z_loss, use_dropout, mesh,
                                setup.trainable_shardings, opt_shardings,
                                setup.frozen_shardings, dropout.rng_impl, objective,
                                partitioning_config, loss.num_microbatches)
    writer = metrics_lib.MetricsWriter(model_dir, "train") if is_chief else None
    evaluator = keeper = None
    if evaluation is not None and evaluation.period is not None:
      evaluator = evaluator_lib.Evaluator(
          evaluation, model_dir=model_dir, task=task, data=data, model=setup.model,
          objective=objective, z_loss=loss.z_loss, mesh=mesh,
          trainable_shardings=setup.trainable_shardings,
          frozen_shardings=setup.frozen_shardings, is_chief=is_chief,
          batches=lambda d: _train_batches(d, 0, rank_task, rank_loss=loss.rank is not None))
      keeper = best_lib.BestKeeper(
          model_dir, best_metric, checkpoint.best_mode, evaluation.min_delta,
          evaluation.early_stopping_patience, is_chief, exported)
      keeper.restore(meta.get("best"))
    backbone_bytes = tree_lib.tree_bytes(frozen)
    summary: dict[str, Any] = dict(backbone_bytes=backbone_bytes, skipped_steps=[],
                                   dropout_rate=model.config.dropout_rate if use_dropout else 0.0)
    if keeper is not None:
      summary["best"] = keeper.summary()

    def save(step: int) -> None:
      store.save(step, trainable, opt_state, data_position=step,
                 extra=dict(task=data.task, **({"best": keeper.state()} if keeper else {})))
      faults.maybe_kill("before_export", step)
      if is_chief:
        checkpoints_lib.export_prompts(model_dir, step, trainable, **exported)
      size = checkpoints_lib.directory_bytes(store.step_dir(step))
      summary.update(checkpoint_bytes=size, checkpoint_fraction_of_backbone=size / max(
          backbone_bytes, 1))
      log.info("Saved step %d: checkpoint %d bytes, %.4f%% of the %d-byte backbone",
               step, size, 100 * size / max(backbone_bytes, 1), backbone_bytes)

  except BaseException:
    run_lock.release()
    raise

  log_period, on_non_finite = report.period(train_steps), checks.on_non_finite
  bar = _progress(report.progress and is_chief, start_step, train_steps, log_period)
  pending = None  # (step, metrics on device): fetched after the next dispatch
  window = dict(start=time.time(), steps=0, tokens=0.0)
  step = start_step
  preempt = preemption.PreemptionWatcher()
  try:
    preempt.install()
    last_step = train_steps
    if keeper is not None and keeper.stopped is not None:  # Stopped early before: stay so.
      summary["early_stopped"], last_step = keeper.stopped, start_step
    for step in range(start_step + 1, last_step + 1):
      host_batch = next(batches)
      # Counted on the host copy: no device transfer, and no rows of other hosts.
      input_tokens = int(np.sum(host_batch["encoder_input_tokens"] > 0))
      batch = partitioning.local_batch_to_global(host_batch, mesh)
      with mesh, partitioning.logical_rules_context(partitioning_config):
        trainable, opt_state, metrics = train_step(trainable, opt_state, frozen, batch,
                                                   np.int32(step), np.int32(seed))
      faults.maybe_kill("after_step", step)
      if pending is not None:
        _log_metrics(pending, writer, window, log_period, summary, bar, on_non_finite)
      pending = (step, metrics, input_tokens)
      stop = None
      # Evaluate before saving: the checkpoint of this step then holds the best
      # so far and the patience counter after its evaluation, so a run resumed
      # from it decides as an uninterrupted one would.
      if evaluator is not None and evaluator.due(step, train_steps):
        results = evaluator(step, trainable, frozen, partitioning_config)
        summary["last_eval"] = dict(step=step, **results)
        stop = keeper.update(step, results["infer_eval"], trainable)
        summary["best"] = keeper.summary()
      if step % checkpoint.period == 0 or step == train_steps or stop is not None:
        _log_metrics(pending, writer, window, log_period, summary, bar, on_non_finite,
                     force=True)
        pending = None
        save(step)
      if stop is not None:  # Early stopping: this step is saved, and the run ends.
        summary["early_stopped"] = keeper.stopped
        break
      faults.maybe_sigterm(step)
      if preempt.should_stop(step):  # SIGTERM: this step is done; save it and stop.
        if pending is not None:
          _log_metrics(pending, writer, window, log_period, summary, bar, on_non_finite,
                       force=True)
          pending = None
        save(step)
        summary["preempted_at_step"] = step
        break
    if pending is not None:
      _log_metrics(pending, writer, window, log_period, summary, bar, on_non_finite,
                   force=True)
  finally:
    preempt.uninstall()
    if bar is not None:
      bar.close()
    store.close()
    run_lock.release()
  summary.update(step=max(step, start_step), start_step=start_step)
  if report.frozen_digest:
    summary["frozen_sha256"] = tree_lib.tree_digest(frozen)
  if is_chief:
    with open(layout.train_summary(model_dir), "w") as f:
      json.dump(summary, f, indent=1, default=metrics_lib.jsonable)
  if "preempted_at_step" in summary:
    log.warning(preempt.message())
  return summary


def _train_batches(data: specs_lib.DataSpec, start: int, rank_task: bool, rank_loss: bool):
  """The batch stream from batch `start` on.

  A rank task's candidates come grouped: as they are for a rank loss, or
  reduced to the correct candidate for the token loss. Other tasks give
  ordinary batches.
  """
  if not rank_task:
    return data_lib.train_batches(data.task, data.feature_lengths, data.batch_size,
                                  split=data.split, seed=data.seed, start_batch=start)
  grouped = rank_data.rank_train_batches(data.task, data.feature_lengths, data.batch_size,
                                         split=data.split, seed=data.seed, start_batch=start)
  return grouped if rank_loss else map(rank_data.positive_targets, grouped)


def dropout_enabled(config: Any, use_dropout: Optional[bool]) -> bool:
  """Whether training draws dropout masks: the model's `dropout_rate` decides.

  Only an explicit `use_dropout=False` (DropoutSpec.enabled) turns a positive
  rate off, and that is logged, so a configured rate is never ignored silently.
  """
  rate = float(getattr(config, "dropout_rate", 0.0) or 0.0)
  if use_dropout is None:
    log.info("Dropout rate %g (T5Config.dropout_rate)", rate)
    return rate > 0
  if not use_dropout and rate > 0:
    log.warning("T5Config.dropout_rate=%g but DropoutSpec.enabled=False: training WITHOUT "
                "dropout, as asked", rate)
  if use_dropout and rate == 0:
    log.warning("DropoutSpec.enabled=True has no effect: T5Config.dropout_rate is 0")
  return bool(use_dropout) and rate > 0


def jit_train_step(model: nn.Module, optimizer: optax.GradientTransformation, z_loss: float,
                   use_dropout: bool, mesh: Any, trainable_shardings: Any,
                   opt_shardings: Any, frozen_shardings: Any,
                   dropout_rng_impl: str = "threefry2x32",
                   objective: step_lib.Objective = step_lib.Objective(),
                   partitioning_config: Optional[partitioning.PartitioningConfig] = None,
                   num_microbatches: int = 1):
  """The train step, jitted with explicit shardings and donated state.

  `step(trainable, opt_state, frozen, batch, step_number, seed)`: the dropout
  key is derived on device from the seed and the step number, both traced,
  so runs that differ only in their seed share one compiled program.

  Calls with equal arguments (linen modules, meshes, shardings and the
  partitioning config compare by value, the modules' initializers left out;
  the optimizer and the objective by identity or value) get the same jitted
  function, so a second run of one
  structure in a process (another seed, prompt initialization, backbone or
  task with the same shapes) neither traces nor compiles again.
  `partitioning_config` is part of that key because its logical-axis rules
  shape the activations' sharding constraints when the step is traced.
  Arguments that cannot be hashed (a wayward objective holds an array) get
  a fresh function.
  """
  if dropout_rng_impl not in ("threefry2x32", "rbg", "unsafe_rbg"):
    raise ValueError(f"dropout_rng_impl={dropout_rng_impl!r}; expected 'threefry2x32', "
                     "'rbg' or 'unsafe_rbg'")
  args = (model, optimizer, float(z_loss), bool(use_dropout), mesh, trainable_shardings,
          opt_shardings, frozen_shardings, dropout_rng_impl, objective, int(num_microbatches))
  key = (tree_lib.without_initializers(model), optimizer, float(z_loss), bool(use_dropout),
         mesh, _tree_key(trainable_shardings), _tree_key(opt_shardings),
         _tree_key(frozen_shardings), dropout_rng_impl, objective, partitioning_config,
         int(num_microbatches))
  return _TRAIN_STEPS.get(key, lambda: _train_step_jit(*args))


# A few, so that a process training many structures keeps few programs alive.
_TRAIN_STEPS = tree_lib.SharedCache(maxsize=8)


def _tree_key(tree: Any) -> tuple[Any, tuple[Any, ...]]:
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(leaves)


def _train_step_jit(model, optimizer, z_loss, use_dropout, mesh, trainable_shardings,
                    opt_shardings, frozen_shardings, dropout_rng_impl, objective,
                    num_microbatches=1):
  base_step = step_lib.make_train_step(model, optimizer, z_loss, use_dropout, objective,
                                       num_microbatches)

  def step_fn(trainable, opt_state, frozen, batch, step, seed):
    return base_step(trainable, opt_state, frozen, batch,
                     jax.random.fold_in(jax.random.key(seed, impl=dropout_rng_impl), step))

  replicated = partitioning.replicated(mesh)
  return jax.jit(
      step_fn,
      in_shardings=(trainable_shardings, opt_shardings, frozen_shardings,
                    partitioning.batch_sharding(mesh), replicated, replicated),
      out_shardings=(trainable_shardings, opt_shardings, replicated),
      donate_argnums=(0, 1))


def _progress(enabled: bool, start: int, total: int, every: int):
  """A tqdm bar on a terminal; in a log file, a plain line every `every` steps."""
  if not enabled:
    return None
  import sys
  if not sys.stderr.isatty():  # Carriage-return redraws would fill a log file.
    return _ProgressLines(start, total, every)
  from tqdm import tqdm
  return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


class _ProgressLines:
  """The progress bar's interface, writing 'train: step N/T, loss L' every `every` steps."""

  def __init__(self, start: int, total: int, every: int):
    self.n, self.total, self.every = start, total, max(1, every)

  def update(self, count: int) -> None:
    self.n += count

  def set_postfix(self, loss: str) -> None:
    if self.n % self.every == 0 or self.n == self.total:
      import sys
      print(f"train: step {self.n}/{self.total}, loss {loss}", file=sys.stderr, flush=True)

  def close(self) -> None:
    pass


def _log_metrics(pending, writer: Optional[metrics_lib.MetricsWriter], window: dict, log_period: int,
                 summary: dict, bar, on_non_finite: str, force: bool = False) -> None:
  step, metrics, input_tokens = pending
  metrics = jax.device_get(metrics)
  loss = float(metrics["loss"])
  if not metrics["finite"]:
    what = (f"loss {loss}" if not np.isfinite(loss)
            else f"update norm {float(metrics['update_norm'])}")
    if on_non_finite == "stop":
      raise NonFiniteLossError(
          f"Non-finite {what} at step {step}; stopping. The last good checkpoint is kept; "
          "pass on_non_finite='skip' (--gin.ChecksSpec.on_non_finite=\"'skip'\") to skip such "
          "steps")
    log.warning("Skipped step %d: non-finite %s", step, what)
    summary["skipped_steps"].append(step)
    return
  window["steps"] += 1
  window["tokens"] += input_tokens
  if bar is not None:
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")
  if force or step % log_period == 0:
    elapsed = max(time.time() - window["start"], 1e-9)
    scalars = step_lib.summarize(metrics)
    scalars.update(steps_per_sec=window["steps"] / elapsed,
                   input_tokens_per_sec=window["tokens"] / elapsed)
    if writer is not None:  # Only process 0 writes.
      writer.write(step, scalars)
    summary["last_metrics"] = dict(step=step, **scalars)
    window.update(start=time.time(), steps=0, tokens=0.0)
