"""Sizes, counts and paths checked before a backbone is read or a step runs.

A zero-length prompt used to train, then die at the first save inside
Orbax's threads with several tracebacks and a temporary folder left behind.
Every check here is cheap and runs first; all problems found are reported
together in one line (InvalidSettingError, a ValueError), naming the setting
as the user wrote it (the T5X macro where there is one) and what is expected.

Validators take plain values, or duck-typed spec objects with the field
names of the binaries' grouped configs:
ModelSpec(config, checkpoint, encoder_prompt, decoder_prompt, trainable_rules),
DataSpec(task, feature_lengths, split, batch_size, seed), CheckpointSpec and
InferenceSpec.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Mapping, Optional, Sequence


class InvalidSettingError(ValueError):
  """One or more settings are out of range; the message lists each."""


_REMOTE = ("gs://", "s3://", "http://", "https://", "hf://")


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> Optional[str]:
  if not _is_int(value) or value < 1:
    return f"{name} must be a positive integer; got {value!r}"
  return None


def _defaults_to_none(module: Any, field: str) -> bool:
  spec = getattr(type(module), "__dataclass_fields__", {}).get(field)
  return spec is not None and spec.default is None


def prompt_problems(prompt: Any, which: str = "encoder") -> list[str]:
  """The prompt module's sizes: length (PROMPT_LENGTH), num_tasks, num_prompts, ..."""
  if prompt is None:
    return []
  kind = type(prompt).__name__
  problems = []
  for field, macro in (("length", "PROMPT_LENGTH"), ("num_tasks", "the number of tasks"),
                       ("num_prompts", "the number of prompts"),
                       ("task_length", "the task prompt length")):
    if not hasattr(prompt, field):
      continue
    value = getattr(prompt, field)
    if value is None and _defaults_to_none(prompt, field):  # an optional size left unset
      continue
    problem = positive_int(f"{macro} ({which} prompt {kind}.{field})", value)
    if problem:
      problems.append(problem)
  files = getattr(prompt, "source_files", None)
  if files is not None and not len(files):
    problems.append(f"{which} prompt {kind}.source_files is empty; expected at least one .npy")
  for path in files or ():
    if not str(path).startswith(_REMOTE) and not os.path.exists(path):
      problems.append(f"{which} prompt {kind}.source_files: {path} does not exist")
  return problems


def feature_length_problems(lengths: Any, required: Sequence[str] = ("inputs", "targets")
                            ) -> list[str]:
  if not isinstance(lengths, Mapping):
    return [f"TASK_FEATURE_LENGTHS must be a dict like {{'inputs': 512, 'targets': 16}}; "
            f"got {lengths!r}"]
  problems = [f"TASK_FEATURE_LENGTHS has no {key!r} length; expected keys {list(required)}"
              for key in required if key not in lengths]
  for key, value in lengths.items():
    problem = positive_int(f"TASK_FEATURE_LENGTHS[{key!r}]", value)
    if problem:
      problems.append(problem)
  return problems


def decoding_problems(config: Any) -> list[str]:
  """DecodingConfig: top-k >= 0, top-p in [0, 1], temperature > 0, beams >= 1, length >= 1."""
  if config is None:
    return []
  problems = []
  top_k = getattr(config, "top_k", 0)
  if not _is_int(top_k) or top_k < 0:
    problems.append(f"DecodingConfig.top_k must be an integer >= 0 (0 keeps all); got {top_k!r}")
  top_p = getattr(config, "top_p", 0.0)
  if not isinstance(top_p, numbers.Real) or not 0.0 <= top_p <= 1.0:
    problems.append(f"DecodingConfig.top_p must be in [0, 1] (0 or 1 keeps all); got {top_p!r}")
  temperature = getattr(config, "temperature", 1.0)
  if not isinstance(temperature, numbers.Real) or temperature <= 0:
    problems.append(f"DecodingConfig.temperature must be > 0; got {temperature!r}")
  for field in ("num_beams", "max_decode_length"):
    if hasattr(config, field):
      problem = positive_int(f"DecodingConfig.{field}", getattr(config, field))
      if problem:
        problems.append(problem)
  return problems


def path_problems(initial_checkpoint_path: Optional[str], model_dir: Optional[str] = None
                  ) -> list[str]:
  problems = []
  ckpt = initial_checkpoint_path
  if ckpt and not str(ckpt).startswith(_REMOTE) and not os.path.exists(ckpt):
    problems.append(f"Checkpoint not found: INITIAL_CHECKPOINT_PATH {ckpt} does not exist; expected a T5X "
                    "checkpoint folder, an Orbax run folder or a Hugging Face folder")
  if model_dir is not None:
    if not isinstance(model_dir, str) or not model_dir:
      problems.append(f"MODEL_DIR must be a folder path; got {model_dir!r}")
    elif not model_dir.startswith(_REMOTE) and os.path.isfile(model_dir):
      problems.append(f"MODEL_DIR {model_dir} is a file; expected a folder")
    elif not model_dir.startswith(_REMOTE):
      parent = os.path.dirname(os.path.abspath(model_dir))
      while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
      if os.path.isfile(parent):
        problems.append(f"MODEL_DIR {model_dir} is under {parent}, a file; expected a folder "
                        "path")
  return problems


def raise_if(problems: Sequence[Optional[str]]) -> None:
  problems = [p for p in problems if p]
  if problems:
    raise InvalidSettingError("; ".join(problems))


def check_model_spec(spec: Any) -> None:
  """A ModelSpec(config, checkpoint, encoder_prompt, decoder_prompt, ...) object."""
  raise_if(prompt_problems(getattr(spec, "encoder_prompt", None), "encoder")
           + prompt_problems(getattr(spec, "decoder_prompt", None), "decoder")
           + path_problems(getattr(spec, "checkpoint", None)))


def check_data_spec(spec: Any) -> None:
  """A DataSpec(task, feature_lengths, split, batch_size, seed) object."""
  problems = feature_length_problems(getattr(spec, "feature_lengths", None))
  problems.append(positive_int("BATCH_SIZE", getattr(spec, "batch_size", None)))
  task = getattr(spec, "task", None)
  if not task:
    problems.append(f"MIXTURE_OR_TASK_NAME must name a task or mixture; got {task!r}")
  raise_if(problems)


def check_train(*, model_dir: Any, train_steps: Any, batch_size: Any,
                task_feature_lengths: Any, checkpoint: Any = None,
                log_period: Any = 100, initial_checkpoint_path: Optional[str] = None,
                encoder_prompt: Any = None, decoder_prompt: Any = None) -> None:
  """Everything `train` can check before it reads a backbone.

  `checkpoint` is a CheckpointSpec(period, keep, restore_fallback) object.
  """
  period = getattr(checkpoint, "period", 1000)
  keep = getattr(checkpoint, "keep", None)
  problems = [positive_int("TRAIN_STEPS", train_steps), positive_int("BATCH_SIZE", batch_size),
              positive_int("CHECKPOINT_PERIOD", period),
              positive_int("ReportSpec.log_period", log_period)]
  if keep is not None:
    problem = positive_int("CheckpointSpec.keep", keep)
    if problem:
      problems.append(problem)
    elif getattr(checkpoint, "restore_fallback", False) and keep < 2:
      problems.append(f"CheckpointSpec.keep={keep} with restore_fallback=True: "
                      "at least 2 checkpoints must be kept to fall back to one")
  problems += feature_length_problems(task_feature_lengths)
  problems += prompt_problems(encoder_prompt, "encoder")
  problems += prompt_problems(decoder_prompt, "decoder")
  problems += path_problems(initial_checkpoint_path, model_dir)
  raise_if(problems)


def check_inference(*, batch_size: Any, task_feature_lengths: Any,
                    initial_checkpoint_path: Optional[str] = None, encoder_prompt: Any = None,
                    inference: Any = None) -> None:
  """Everything `evaluate` and `infer` can check before they read a backbone.

  `inference` is an InferenceSpec(checkpoint_step, restore, decoding,
  class_labels, max_examples, ensemble_prompts, ensemble_method) object.
  """
  max_examples = getattr(inference, "max_examples", None)
  checkpoint_step = getattr(inference, "checkpoint_step", None)
  ensemble_prompts = getattr(inference, "ensemble_prompts", 0)
  problems = [positive_int("BATCH_SIZE", batch_size)]
  problems += feature_length_problems(task_feature_lengths, required=("inputs",))
  problems += prompt_problems(encoder_prompt, "encoder")
  problems += decoding_problems(getattr(inference, "decoding", None))
  problems += path_problems(initial_checkpoint_path)
  if max_examples is not None:
    problems.append(positive_int("MAX_EXAMPLES (InferenceSpec.max_examples)", max_examples))
  if checkpoint_step is not None and checkpoint_step != "best" and (
      not _is_int(checkpoint_step) or checkpoint_step < 0):
    problems.append(f"CHECKPOINT_STEP must be an integer >= 0, 'best' or None; got "
                    f"{checkpoint_step!r}")
  if ensemble_prompts and (not _is_int(ensemble_prompts) or ensemble_prompts < 0):
    problems.append(f"InferenceSpec.ensemble_prompts must be an integer >= 0; "
                    f"got {ensemble_prompts!r}")
  raise_if(problems)


def microbatch_problem(num_microbatches: Any, batch_size: Any, data_replicas: int
                       ) -> Optional[str]:
  """NUM_MICROBATCHES must divide the batch each data-parallel replica takes."""
  problem = positive_int("NUM_MICROBATCHES (LossSpec.num_microbatches)", num_microbatches)
  if problem or not _is_int(batch_size) or batch_size < 1 or batch_size % data_replicas:
    return problem  # A bad BATCH_SIZE is reported on its own.
  per_device = batch_size // data_replicas
  if per_device % num_microbatches:
    return (f"NUM_MICROBATCHES={num_microbatches} does not divide the per-device batch "
            f"{per_device} (BATCH_SIZE={batch_size} over {data_replicas} data-parallel "
            "replicas); expected a divisor of it")
  return None
