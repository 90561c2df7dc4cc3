"""Synthetic backbones: their configs, their pretraining (cached), and exact match.

The quickstart, the recycling harness, the tests and the benchmarks share
these small T5s over the byte vocabulary (`prompt_tuning.tasks.synthetic`):

    cfg = quickstart_pretrain_config()             # or PretrainConfig(size=..., ...)
    path = pretrain(cfg)                           # a T5X-layout checkpoint folder
    exact_match_of(backbone_config(cfg.size), path, prompt, trained, task, "validation", 512)

`pretrain` runs the same trainer as prompt tuning, with everything trainable,
and writes its result once under the cache folder (`default_cache_dir`),
named by everything that changes the weights (`backbone_path`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import numpy as np
import optax

from prompt_tuning import evaluation
from prompt_tuning.layout import default_cache_dir  # noqa: F401  (re-exported: callers use it here)
from prompt_tuning.models import presets
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.prompts import soft
from prompt_tuning.readers import config as readers_config
from prompt_tuning.readers import vocabulary as vocabulary_lib
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.runtime import freezing
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, InferenceSpec, ModelSpec
from prompt_tuning.train import loop
from prompt_tuning.train.specs import ReportSpec

log = logging.getLogger(__name__)

# Backbones share the byte vocabulary; two sizes (and any seed) for recycling.
SIZES = tuple(presets.SYNTHETIC_SIZES)


def backbone_config(size: str) -> T5Config:
  """The T5Config of a synthetic backbone size (one of SIZES)."""
  from prompt_tuning.tasks import synthetic
  if size not in SIZES:
    raise ValueError(f"Unknown quickstart backbone size {size!r}; expected one of {sorted(SIZES)}")
  config = presets.preset("synthetic", size)
  assert config.vocab_size == synthetic.VOCAB_ROWS, "presets and the synthetic tasks disagree"
  return config


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  size: str = "small"
  seed: int = 0
  steps: int = 3000
  batch_size: int = 64
  learning_rate: float = 1e-3
  warmup_steps: int = 200
  # The research suite pretrains on a wider mixture (prompt_tuning.tasks.research).
  mixture: str = "synthetic_pretrain"
  # Longer inputs for mixtures with longer examples (reading_pretrain: 32).
  inputs_length: int = 16


# The quickstart's own pretraining: the tiny backbone at a higher peak rate
# reaches the small one's held-out result (100% exact match with the trained
# prompt and with the instruction, 0% without a prompt) in about half the
# time, which keeps the first run under five minutes on two AVX2 cores
# (benchmarks/results/amd-epyc-avx2/quickstart.md). Each size keeps the rate it was measured with.
QUICKSTART_SIZE = "tiny"
QUICKSTART_RATES = {"tiny": (2e-3, 100), "small": (1e-3, 200)}  # (peak rate, warmup steps)


def quickstart_pretrain_config(size: str = QUICKSTART_SIZE, seed: int = 0,
                               steps: int = 3000) -> PretrainConfig:
  """The quickstart's pretraining for a backbone size, at that size's measured rate."""
  if size not in QUICKSTART_RATES:
    raise ValueError(f"Unknown quickstart backbone size {size!r}; expected one of "
                     f"{sorted(QUICKSTART_RATES)}")
  rate, warmup = QUICKSTART_RATES[size]
  return PretrainConfig(size=size, seed=seed, steps=steps, learning_rate=rate,
                        warmup_steps=warmup)


def backbone_path(cache_dir: str, cfg: PretrainConfig) -> str:
  """The cached folder of `cfg`'s backbone, named by everything that changes its weights."""
  name = f"synthetic_{cfg.size}_seed{cfg.seed}_steps{cfg.steps}_bs{cfg.batch_size}"
  if cfg.mixture != "synthetic_pretrain":  # The quickstart's cached folders keep their names.
    name += f"_{cfg.mixture}"
  if cfg.inputs_length != 16:  # synthetic.FEATURE_LENGTHS: older folders keep their names.
    name += f"_in{cfg.inputs_length}"
  defaults = PretrainConfig()
  if cfg.learning_rate != defaults.learning_rate or cfg.warmup_steps != defaults.warmup_steps:
    name += f"_lr{cfg.learning_rate:g}_wu{cfg.warmup_steps}"
  return os.path.join(cache_dir, "backbones", name)


class Interrupted(RuntimeError):
  """A training stage stopped early (SIGTERM): nothing was exported or scored."""


def require_finished(summary: dict[str, Any], steps: int, model_dir: str, what: str) -> None:
  """Raises Interrupted unless `loop.train` reached `steps` (a preempted run saves its
  checkpoint and returns early; exporting or scoring it would pass off a partly
  trained model as finished)."""
  if "preempted_at_step" in summary or summary.get("step", steps) < steps:
    raise Interrupted(f"{what} stopped at step {summary.get('step')} of {steps} (SIGTERM); "
                      f"nothing was exported. Run the same command again to resume from the "
                      f"checkpoint in {model_dir}")


def pretrain(cfg: PretrainConfig, cache_dir: Optional[str] = None,
             progress: bool = True) -> str:
  """Pretrains a backbone (or finds it cached); returns its T5X-layout checkpoint folder."""
  import orbax.checkpoint as ocp
  from prompt_tuning.tasks import synthetic
  cache_dir = cache_dir or default_cache_dir()
  out = backbone_path(cache_dir, cfg)
  done = os.path.join(out, "DONE")
  if os.path.exists(done):
    log.info("Reusing cached backbone %s", out)
    if vocabulary_lib.recorded(out) is None:  # Cached before backbones recorded it.
      vocabulary_lib.record(out, vocabulary_lib.BYTE)
    return out
  work = out + ".training"
  warmup = min(cfg.warmup_steps, cfg.steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup,
                                                cfg.steps, cfg.learning_rate / 10)
  model_config = backbone_config(cfg.size)
  spec = ModelSpec(model_config, trainable_rules=freezing.FULL_FINETUNING_RULES)
  summary = loop.train(model_dir=work, model=spec,
                       data=DataSpec(cfg.mixture,
                                     {**synthetic.FEATURE_LENGTHS, "inputs": cfg.inputs_length},
                                     cfg.batch_size, seed=cfg.seed),
                       train_steps=cfg.steps,
                       optimizer=optax.chain(optax.clip_by_global_norm(1.0),
                                             optax.adamw(schedule, weight_decay=1e-4)),
                       seed=cfg.seed, checkpoint=CheckpointSpec(period=cfg.steps),
                       report=ReportSpec(log_period=100, progress=progress))
  require_finished(summary, cfg.steps, work, f"Pretraining the {cfg.size} backbone")
  # Export the weights as a T5X-layout checkpoint that the readers load by name.
  store = checkpoints_lib.CheckpointStore(work)
  params = store.restore_trainable(model_setup.abstract(spec).trainable)
  store.close()
  ckpt_dir = os.path.join(out, f"checkpoint_{cfg.steps}")
  if os.path.exists(ckpt_dir):  # A previous export died before DONE: redo it.
    import shutil
    shutil.rmtree(ckpt_dir)
  ocp.PyTreeCheckpointer().save(ckpt_dir, {"target": jax.device_get(params),
                                           "state": {"step": np.int32(cfg.steps)}})
  # The architecture and vocabulary recorded beside the weights: every reader
  # takes the config from it (relative_attention_max_distance cannot be seen in
  # shapes), and every binary the vocabulary.
  readers_config.write_record(out, model_config)
  vocabulary_lib.record(out, vocabulary_lib.BYTE)
  with open(done, "w") as f:
    f.write(json.dumps(dataclasses.asdict(cfg)))
  return out


def exact_match_of(model_config: T5Config, backbone: str, prompt: Optional[soft.SoftPrompt],
                   trainable: Optional[Any], task: str, split: str, num_examples: int,
                   batch_size: int = 128) -> float:
  """Exact match (%) of greedy decoding on a split, with the given prompt (or none)."""
  from prompt_tuning import decoding
  from prompt_tuning.tasks import synthetic
  from prompt_tuning.runtime import data as data_lib
  setup = model_setup.build(ModelSpec(model_config, backbone, prompt),
                            require_trainable=False, init_trainable=trainable is None)
  params = freezing.merge(trainable if trainable is not None else setup.trainable,
                          setup.frozen)
  task_obj = data_lib.get_task_or_mixture(task)
  examples = data_lib.eval_examples(task, split, synthetic.FEATURE_LENGTHS, num_examples)
  # Fewer examples than a batch: one batch of exactly them, not padded to `batch_size`.
  preds = evaluation.predict(setup.model, params, examples,
                             task_obj.output_features["targets"].vocabulary,
                             synthetic.FEATURE_LENGTHS["inputs"],
                             max(1, min(batch_size, len(examples))),
                             InferenceSpec(decoding=decoding.DecodingConfig(max_decode_length=8)))
  return evaluation.compute_metrics(task_obj, examples, [p for p, _ in preds])["exact_match"]
