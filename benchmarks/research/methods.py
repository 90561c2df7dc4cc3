"""The methods the research suite compares, each a `runs.Method`."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from benchmarks.research.config import Suite
from benchmarks.research.runs import Method, count_parameters

def soft_prompt(length: int, init: str = "sampled_vocab") -> Callable[[str, int], Any]:
  """A SoftPrompt factory: random-uniform, sampled-vocabulary or class-label init."""
  def build(path: str, seed: int):
    from prompt_tuning.prompts import initializers, soft
    from prompt_tuning.tasks import research
    import seqio
    if init == "random_uniform":
      return soft.SoftPrompt(length, init=initializers.random_uniform(0.5))
    if init == "sampled_vocab":
      return soft.SoftPrompt(length, init=_seeded_sampled(path, length, seed))
    if init == "class_labels":
      return soft.SoftPrompt(length, init=initializers.class_labels(
          research.CLASS_LABELS, embeddings=path, vocabulary=seqio.ByteVocabulary(), seed=seed))
    raise ValueError(f"Unknown init {init!r}")
  return build


def prompt_tuning(suite: Suite, length: Optional[int] = None,
                  init: str = "sampled_vocab") -> Method:
  length = length or suite.prompt_length
  return Method(f"prompt tuning ({init}, {length} tokens)", soft_prompt(length, init))


FINETUNE = Method("full fine-tuning", lambda path, seed: None, rules="finetune",
                  optimizer="finetune")


def fixed_prompt(name: str, value_PH: np.ndarray) -> Method:
  """Prompt tuning started from a given [P, H] array (SPoT's transferred prompt)."""
  value = np.asarray(value_PH, np.float32)

  def build(path: str, seed: int):
    from prompt_tuning.prompts import initializers, soft
    return soft.SoftPrompt(value.shape[0], init=initializers.from_array(value))
  return Method(name, build, settings=(_digest(value),))


def _digest(value: Any) -> str:
  """A short content hash (a run-cache key part) of an array or a file."""
  import hashlib
  from benchmarks.research.family import fingerprint
  if isinstance(value, str):
    return fingerprint(value)
  return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]


def sampled_top(path: str, ids: np.ndarray, seed: int):
  """Sampled-vocabulary init by the paper's rule: each position a row of the
  backbone's table drawn (with the run's seed, without replacement while the
  pool lasts) among `ids`, the pretraining corpus's most frequent pieces."""
  import jax.numpy as jnp
  from prompt_tuning.prompts.initializers import load_embeddings
  table = load_embeddings(path)
  pool = np.asarray(ids, np.int64)

  def init(rng, shape, dtype=jnp.float32):
    del rng  # the run's seed, explicitly
    picks = np.random.RandomState(seed).choice(pool, shape[0], replace=shape[0] > len(pool))
    return jnp.asarray(table[picks][:, :shape[1]], dtype)
  return init


def family_prompt(length: int, init: str, frequent_ids: Callable[[], np.ndarray], top: int,
                  labels: Optional[Sequence[str]] = None, vocabulary: Any = None,
                  rate: Optional[float] = None) -> Method:
  """Prompt tuning on a family backbone: random uniform (the paper's [-0.5, 0.5]),
  sampled from the `top` most frequent pieces of pretraining, or class labels
  (each label's mean sub-token embedding, the rest sampled as before)."""
  def build(path: str, seed: int):
    from prompt_tuning.prompts import initializers, soft
    ids = np.asarray(frequent_ids())[:top]
    if init == "random_uniform":
      return soft.SoftPrompt(length, init=initializers.random_uniform(0.5))
    if init == "sampled_vocab":
      return soft.SoftPrompt(length, init=sampled_top(path, ids, seed))
    if init == "class_labels":
      return soft.SoftPrompt(length, init=initializers.class_labels(
          tuple(labels), embeddings=path, vocabulary=vocabulary,
          fallback=sampled_top(path, ids, seed + 1000), seed=seed))
    raise ValueError(f"Unknown init {init!r}")
  settings = (f"top={top}", f"labels={tuple(labels or ())}")
  return Method(f"prompt tuning ({init}, {length} tokens)", build, learning_rate=rate,
                settings=settings)


def single_task_methods(suite: Suite, sources: Sequence[str]) -> list[Method]:
  """The library's single-task methods beside plain prompt tuning (issue 17's rows).

  `sources`: ATTEMPT's source prompt files ([P, H] each).
  """
  from prompt_tuning.prompts import attempt, deep, ia3, per_layer
  from prompt_tuning.train import wayward
  from prompt_tuning.train.specs import LossSpec
  p = suite.prompt_length

  def sampled(path: str, seed: int):
    return soft_prompt(p)(path, seed)
  return [
      # Li & Liang 2021 / deep prompt tuning: key/value prefixes in every
      # attention, plain (no reparameterization) and with the MLP.
      Method(f"deep prompts ({p} per layer)",
             lambda path, seed: deep.DeepPrompt(length=p), optimizer="adam"),
      Method(f"prefix tuning (MLP-reparameterized, {p} per layer)",
             lambda path, seed: deep.DeepPrompt(length=p, reparameterize=True,
                                                reparam_hidden=64), optimizer="adam"),
      # Liu et al. 2022 (T-Few): rescaling vectors, initialized to ones.
      Method("IA3", lambda path, seed: ia3.IA3(), optimizer="adam"),
      Method(f"prompt tuning + IA3 ({p} tokens)",
             lambda path, seed: per_layer.CombinedPrompt(prompt=sampled(path, seed),
                                                         per_layer=(ia3.IA3(),))),
      # Khashabi et al. 2022: the prompt stays near a discrete one (gamma 0.01,
      # the seed library's default); the text is the pretraining instruction
      # of the composition's last skill.
      Method(f"wayward prompt tuning ({p} tokens, 'reverse: ')", sampled,
             train_kwargs=lambda path: dict(loss=LossSpec(wayward=wayward.Wayward(text="reverse: ")))),
      # Asai et al. 2022: the paper's temperature d * e, bottleneck and
      # sampled-vocabulary target prompt.
      Method(f"ATTEMPT ({len(sources)} source prompts)",
             lambda path, seed: attempt.AttemptPrompt(
                 tuple(sources), embeddings=path, first_n=259,
                 init=_seeded_sampled(path, p, seed)),
             settings=tuple(_digest(s) for s in sources)),
  ]


def _seeded_sampled(path: str, length: int, seed: int):
  """Sampled-vocabulary init with the run's seed; rows 3..258 are the byte
  vocabulary's real tokens (0-2: pad, EOS, UNK)."""
  from prompt_tuning.prompts import initializers
  del length  # The prompt's shape says it.
  return initializers.sampled_vocab(embeddings=path, first_n=259, seed=seed)


def multi_task_methods(suite: Suite, num_tasks: int, width: int,
                       hyper_parameters: int) -> list[Method]:
  """Methods for a mixture: task-aware (a task index) and input-dependent (none).

  The multi-task prompt's length is chosen so that its trainable parameters
  ((T + 1) x P x H: a shared prompt plus one per task) match HyperPrompt's
  (He et al. 2022 compare at equal parameters).
  """
  from prompt_tuning.prompts import input_dependent, multi_task
  mt_length = max(1, round(hyper_parameters / ((num_tasks + 1) * width)))
  p = suite.prompt_length
  return [
      prompt_tuning(suite),
      Method(f"multi-task prompt (shared + per task, {mt_length} tokens)",
             lambda path, seed: multi_task.MultiTaskPrompt(
                 mt_length, num_tasks, mode="add",
                 init=_seeded_sampled(path, mt_length, seed))),
      Method("HyperPrompt-Global (encoder + decoder, 8 per layer)",
             lambda path, seed: hyperprompt(num_tasks), optimizer="adam"),
      # Levine et al. 2022: queries over the frozen backbone's own reading of
      # the input; no task index.
      Method(f"ID-PT (frozen reading, {p} tokens)",
             lambda path, seed: input_dependent.FrozenReadingPrompt(
                 p, width=64, num_layers=2, num_heads=4, mlp_dim=128),
             optimizer="adam", model_class=input_dependent.InputDependentT5),
  ]


def hyperprompt(num_tasks: int):
  """HyperPrompt-Global sized for the tiny backbones: 8 positions per layer, local
  networks of width 4 and 8-dimensional task and layer embeddings (the
  hypernetworks grow with embedding_dim x width x bottleneck; at the module's
  defaults they would outnumber the tiny backbone's own weights)."""
  from prompt_tuning.prompts import hyper
  return hyper.HyperPrompt(num_tasks, length=8, bottleneck=4, task_dim=8, embedding_dim=8,
                           hidden_dim=16)


def hyper_parameter_count(size: str, num_tasks: int) -> int:
  """HyperPrompt-Global's trainable parameters on a backbone of `size`."""
  from prompt_tuning import backbones
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts import base
  cfg = backbones.backbone_config(size)
  module = base.for_model(hyperprompt(num_tasks), cfg)
  abstract = params_lib.abstract_params(T5(cfg, encoder_prompt=module))[0]
  return count_parameters(abstract["encoder_prompt"])

