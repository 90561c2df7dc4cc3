"""Making the miniature family: pretraining (cached, resumable), quality, zero-shot rows."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from prompt_tuning.models import presets
from prompt_tuning.models.t5 import T5Config

SIZES = tuple(presets.MINIATURE_SIZES)  # smallest first
MAKE_COMMAND = "python -m prompt_tuning.miniature make"
VOCABULARY_FILE = "spiece.model"  # readers.vocabulary.SPM_FILE, as in an HF folder
QUALITY_FILE = "quality.json"


def backbone_config(size: str) -> T5Config:
  """A miniature size's T5Config (T5 1.1: gated GELU, untied output layer, no dropout)."""
  if size not in SIZES:
    raise ValueError(f"Unknown miniature size {size!r}; expected one of {list(SIZES)}")
  return presets.preset("miniature", size)


def parameter_count(config: T5Config) -> int:
  """The exact number of parameters (from the model's abstract initialization)."""
  import jax
  from prompt_tuning.runtime import freezing
  from prompt_tuning.runtime import setup as model_setup
  from prompt_tuning.runtime.specs import ModelSpec
  abstract = model_setup.abstract(ModelSpec(config, trainable_rules=freezing.FULL_FINETUNING_RULES))
  leaves = jax.tree.leaves((abstract.trainable, abstract.frozen))
  return int(sum(np.prod(x.shape) for x in leaves))


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """How every size is pretrained: the same examples (tokens) for each.

  Each step reads `batch_size` chunks of span-corruption data: 64 input and
  14 target tokens (EOS included) cut from 70 corpus tokens.
  """
  steps: int = 600
  batch_size: int = 16
  learning_rate: float = 2e-3
  warmup_steps: int = 30
  seed: int = 0
  # Saves per run, so that a killed make loses at most a tenth of a size.
  checkpoints: int = 10
  # Sizes trained longer than `steps` (size, steps): the rule when a
  # larger size comes out worse than a smaller one ("train it longer and say
  # so"). Each such size is named with its own steps, and the record says so.
  longer: tuple[tuple[str, int], ...] = ()
  # Sizes trained at their own peak learning rate (size, rate): a wider model
  # often needs a lower one. Each is named with its own rate in its folder.
  # l: at 2e-3 it came out worse than m (600 and 1200 steps); of 1e-3 and 5e-4,
  # 1e-3 gives the lower held-out loss (docs/miniature.md).
  rates: tuple[tuple[str, float], ...] = (("l", 1e-3),)

  def for_size(self, size: str) -> "PretrainConfig":
    """The settings one size is trained with (its own steps and rate where it has them)."""
    return dataclasses.replace(self, steps=dict(self.longer).get(size, self.steps),
                               learning_rate=dict(self.rates).get(size, self.learning_rate),
                               longer=(), rates=())


def backbone_path(corpus_path: str, size: str, cfg: PretrainConfig) -> str:
  """The cached backbone folder, named by everything that changes its weights
  (the corpus folder is named by the corpus and vocabulary)."""
  cfg = cfg.for_size(size)
  name = (f"{size}_seed{cfg.seed}_steps{cfg.steps}_bs{cfg.batch_size}"
          f"_lr{cfg.learning_rate:g}_wu{cfg.warmup_steps}")
  return os.path.join(corpus_path, "backbones", name)


class NotMade(FileNotFoundError):
  """A backbone of the family is missing or half-written; the message names the command."""


def require(size: str, cfg: PretrainConfig = PretrainConfig(), corpus_spec=None,
            cache_dir: Optional[str] = None) -> str:
  """The finished backbone folder of `size`, or NotMade in one line naming it and
  the command that makes it."""
  from prompt_tuning.tasks import miniature as tasks_lib
  backbone_config(size)
  try:
    corpus = tasks_lib.find(corpus_spec or tasks_lib.CorpusSpec(), cache_dir)
  except tasks_lib.NotMade as e:
    raise NotMade(f"Miniature backbone {size!r} cannot exist yet: {e}") from None
  path = backbone_path(corpus.path, size, cfg)
  if not os.path.exists(os.path.join(path, "DONE")):
    state = ("half-written (no DONE; the make was interrupted)"
             if os.path.exists(path) or os.path.exists(path + ".training") else "missing")
    seed = f" --seed {cfg.seed}" if cfg.seed != PretrainConfig.seed else ""
    raise NotMade(f"Miniature backbone {size!r} at {path} is {state}: {MAKE_COMMAND} "
                  f"--sizes {size}{seed}")
  return path


def copy_vocabulary(spm_path: str, backbone_dir: str) -> str:
  """Records the vocabulary with the checkpoint: the .model file copied beside
  config.json and named in it, so train/eval/infer/serve read it from there."""
  from prompt_tuning.readers import vocabulary
  vocabulary.record(backbone_dir, spm_path)
  return os.path.join(backbone_dir, VOCABULARY_FILE)


def pretrain(size: str, corpus, cfg: PretrainConfig = PretrainConfig(),
             prefix: str = "miniature", progress: bool = False, log=print) -> str:
  """Pretrains one size with span corruption (or finds it cached); returns its folder.

  Resumable: the run saves `cfg.checkpoints` times, and a killed run started
  again continues from its last save (the trainer skips the batches it saw).
  The folder holds a T5X-layout checkpoint, config.json, the vocabulary and
  quality.json (held-out span-corruption loss and token accuracy).
  """
  import jax
  import optax
  import orbax.checkpoint as ocp
  from prompt_tuning import backbones
  from prompt_tuning.readers import config as readers_config
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  from prompt_tuning.runtime import freezing
  from prompt_tuning.runtime import setup as model_setup
  from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, ModelSpec
  from prompt_tuning.tasks import miniature as tasks_lib
  from prompt_tuning.train import loop
  from prompt_tuning.train.specs import ReportSpec
  out = backbone_path(corpus.path, size, cfg)
  cfg = cfg.for_size(size)
  done = os.path.join(out, "DONE")
  if os.path.exists(done):
    from prompt_tuning.readers import vocabulary
    if vocabulary.recorded(out) is None:  # Made before the vocabulary was recorded.
      copy_vocabulary(corpus.spm_path, out)
    return out
  work = out + ".training"
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate,
                                                min(cfg.warmup_steps, cfg.steps // 2),
                                                cfg.steps, cfg.learning_rate / 10)
  config = backbone_config(size)
  spec = ModelSpec(config, trainable_rules=freezing.FULL_FINETUNING_RULES)
  start, cpu_start = time.time(), time.process_time()
  summary = loop.train(
      model_dir=work, model=spec,
      data=DataSpec(f"{prefix}_span_corruption",
                    {"inputs": tasks_lib.INPUTS_LENGTH, "targets": tasks_lib.TARGETS_LENGTH},
                    cfg.batch_size, seed=cfg.seed),
      train_steps=cfg.steps,
      optimizer=optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, weight_decay=1e-4)),
      seed=cfg.seed, checkpoint=CheckpointSpec(period=max(1, cfg.steps // cfg.checkpoints), keep=2),
      report=ReportSpec(log_period=max(1, min(100, cfg.steps // 10)), progress=progress))
  backbones.require_finished(summary, cfg.steps, work, f"Pretraining the miniature {size!r}")
  store = checkpoints_lib.CheckpointStore(work)
  params = store.restore_trainable(model_setup.abstract(spec).trainable)
  store.close()
  os.makedirs(out, exist_ok=True)
  ckpt_dir = os.path.join(out, f"checkpoint_{cfg.steps}")
  shutil.rmtree(ckpt_dir, ignore_errors=True)  # An export that died before DONE.
  ocp.PyTreeCheckpointer().save(ckpt_dir, {"target": jax.device_get(params),
                                           "state": {"step": np.int32(cfg.steps)}})
  readers_config.write_record(out, config)
  copy_vocabulary(corpus.spm_path, out)
  seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
  record = {"size": size, "parameters": parameter_count(config), "pretrain": dataclasses.asdict(cfg),
            "examples": cfg.steps * cfg.batch_size,
            "corpus_tokens": cfg.steps * cfg.batch_size * tasks_lib.CHUNK_LENGTH,
            # This process's share (a resumed make counts only its last run).
            "train_wall_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            **quality(config, out, corpus)}
  with open(os.path.join(out, QUALITY_FILE), "w") as f:
    json.dump(record, f, indent=1)
  with open(done, "w") as f:
    f.write(json.dumps(dataclasses.asdict(cfg)))
  log(f"{size}: {record['parameters']:,} parameters, held-out loss {record['heldout_loss']:.3f}, "
      f"token accuracy {record['heldout_token_accuracy']:.1f}%")
  return out


def _load(config: T5Config, backbone: str):
  """(model, params) of a finished backbone."""
  from prompt_tuning.runtime import freezing
  from prompt_tuning.runtime import setup as model_setup
  from prompt_tuning.runtime.specs import ModelSpec
  setup = model_setup.build(ModelSpec(config, backbone), require_trainable=False,
                            init_trainable=True)
  return setup.model, freezing.merge(setup.trainable, setup.frozen)


def quality(config: T5Config, backbone: str, corpus, max_examples: int = 1024,
            batch_size: int = 128) -> dict[str, float]:
  """Held-out span-corruption loss (nats per target token, EOS included) and
  token accuracy (%, argmax = target) on the held-out entries' text."""
  import jax
  import jax.numpy as jnp
  from prompt_tuning.models.t5 import shift_right
  from prompt_tuning.tasks import miniature as tasks_lib
  model, params = _load(config, backbone)
  inputs, targets = tasks_lib.span_corruption_arrays(corpus, "validation")
  eos = np.ones((len(inputs), 1), np.int32)
  inputs = np.concatenate([inputs, eos], 1)[:max_examples]
  targets = np.concatenate([targets, eos], 1)[:max_examples]

  @jax.jit
  def batch_stats(enc, tgt):
    logits = model.apply({"params": params}, enc, shift_right(tgt), tgt).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    return nll.sum(), (jnp.argmax(logits, -1) == tgt).sum()

  # Whole batches only: one compiled program.
  size = min(batch_size, len(inputs))
  n = len(inputs) - len(inputs) % size
  total_nll, correct = 0.0, 0
  for i in range(0, n, size):
    nll, hit = batch_stats(inputs[i:i + size], targets[i:i + size])
    total_nll, correct = total_nll + float(nll), correct + int(hit)
  count = n * targets.shape[1]
  return {"heldout_loss": total_nll / count, "heldout_token_accuracy": 100.0 * correct / count,
          "heldout_examples": n, "heldout_tokens": count}


def _accuracy_drop_p(small: dict[str, Any], large: dict[str, Any]) -> float:
  """Two-sided p of a two-proportion z-test on held-out token accuracy (the
  same held-out tokens for every size; unpaired, so conservative)."""
  from prompt_tuning.tasks import miniature as tasks_lib
  def tokens(r):
    return r.get("heldout_tokens") or r.get("heldout_examples", 1024) * tasks_lib.TARGETS_LENGTH
  p1, p2 = small["heldout_token_accuracy"] / 100, large["heldout_token_accuracy"] / 100
  n1, n2 = tokens(small), tokens(large)
  pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
  se = math.sqrt(max(pooled * (1 - pooled) * (1 / n1 + 1 / n2), 1e-300))
  return math.erfc(abs(p1 - p2) / se / math.sqrt(2))


def check_order(records: Sequence[dict[str, Any]]) -> list[str]:
  """Problems: each size that is a worse model than the next smaller one: a
  higher held-out loss, or a lower held-out token accuracy by a two-proportion
  test at p < 0.05 (at this budget s, m and l predict the same frequent pieces,
  and their accuracies differ by a few of 14,336 tokens)."""
  problems = []
  for small, large in zip(records, records[1:]):
    if large["heldout_loss"] > small["heldout_loss"]:
      problems.append(f"{large['size']} (held-out loss {large['heldout_loss']:.3f}) is worse than "
                      f"{small['size']} ({small['heldout_loss']:.3f})")
    if (large.get("heldout_token_accuracy", 0) < small.get("heldout_token_accuracy", 0)
        and _accuracy_drop_p(small, large) < 0.05):
      problems.append(f"{large['size']} (token accuracy {large['heldout_token_accuracy']:.1f}%) is "
                      f"worse than {small['size']} ({small['heldout_token_accuracy']:.1f}%, "
                      f"p = {_accuracy_drop_p(small, large):.2g})")
  return problems


class FamilyNotDone(RuntimeError):
  """A larger size came out worse than a smaller one: the family is not done."""


def make(cfg: PretrainConfig = PretrainConfig(), sizes: Sequence[str] = SIZES,
         corpus_spec=None, cache_dir: Optional[str] = None, prefix: str = "miniature",
         log: Callable[[str], None] = print) -> dict[str, Any]:
  """Makes the family (each step cached; rerun after a kill to continue): the
  corpus and vocabulary, then each size, smallest first. Returns the family
  record (also written as family.json in the corpus folder), and raises
  FamilyNotDone if a larger size is worse than a smaller one.
  """
  from prompt_tuning.tasks import miniature as tasks_lib
  if prefix == "miniature" and (corpus_spec is not None or cache_dir is not None):
    raise ValueError("The 'miniature' tasks read the default corpus; a corpus_spec or "
                     "cache_dir of your own needs tasks registered under another prefix "
                     "(prompt_tuning.tasks.miniature.register(prefix, spec, cache_dir))")
  corpus = tasks_lib.prepare(corpus_spec or tasks_lib.CorpusSpec(), cache_dir, log=log)
  records = []
  for size in sorted(sizes, key=SIZES.index):
    start = time.time()
    path = pretrain(size, corpus, cfg, prefix=prefix, log=log)
    with open(os.path.join(path, QUALITY_FILE)) as f:
      records.append({**json.load(f), "path": path})
    log(f"{size}: ready in {time.time() - start:.0f} s ({path})")
  problems = check_order(records)
  family = {"corpus": corpus.record(), "corpus_path": corpus.path,
            "pretrain": dataclasses.asdict(cfg), "sizes": records,
            "done": not problems, "problems": problems}
  with open(os.path.join(corpus.path, "family.json"), "w") as f:
    json.dump(family, f, indent=1)
  if problems:
    raise FamilyNotDone("The family is not done: " + "; ".join(problems) + ". Train the larger "
                        "size longer (--longer SIZE=STEPS) and say so in the results")
  return family


def zero_shot(task: str, size: str, split: str = "test", cfg: PretrainConfig = PretrainConfig(),
              prefix: str = "miniature", max_examples: Optional[int] = None,
              backbone: Optional[str] = None) -> dict[str, Any]:
  """The zero-shot row: the frozen backbone with no prompt, on a real-text task.

  Classification tasks (pos, etymology, binary) are scored by rank
  classification over their labels (the best log-likelihood wins), the
  headword task by greedy decoding and exact match. Returns the accuracy
  (%), the per-example correctness (for paired tests) and the count.
  """
  from prompt_tuning import decoding
  from prompt_tuning.runtime import data as data_lib
  from prompt_tuning.runtime.predictions import predict
  from prompt_tuning.runtime.specs import InferenceSpec
  from prompt_tuning.tasks import gcide
  from prompt_tuning.tasks import miniature as tasks_lib
  backbone = backbone or require(size, cfg)
  model, params = _load(backbone_config(size), backbone)
  name = f"{prefix}_{task}"
  examples = data_lib.eval_examples(name, split, tasks_lib.FEATURE_LENGTHS, max_examples)
  vocab = data_lib.get_task_or_mixture(name).output_features["targets"].vocabulary
  labels = gcide.LABELS.get(task)
  spec = InferenceSpec(decoding=decoding.DecodingConfig(
      max_decode_length=tasks_lib.FEATURE_LENGTHS["targets"]), class_labels=labels)
  preds = predict(model, params, examples, vocab, tasks_lib.FEATURE_LENGTHS["inputs"],
                  max(1, min(64, len(examples))), spec)
  targets = [ex["targets_pretokenized"].decode() if isinstance(ex["targets_pretokenized"], bytes)
             else str(ex["targets_pretokenized"]) for ex in examples]
  correct = [p.strip() == t.strip() for (p, _), t in zip(preds, targets)]
  return {"task": task, "size": size, "split": split, "accuracy": 100.0 * float(np.mean(correct)),
          "correct": correct, "examples": len(correct)}

