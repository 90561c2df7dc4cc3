"""What a run writes under MODEL_DIR, in one place (the trainer writes it, the readers
find checkpoints in it).

    MODEL_DIR/
      checkpoints/<step>/            Orbax: trainable params, optimizer state, meta
      prompts/step_<N>/<param>.npy   every prompt, e.g. encoder_prompt.prompt.npy
      train/  eval/  <name>/         metrics.jsonl and TensorBoard events
      infer/<task>-<split>-step_<N>.jsonl
      train_summary.json
"""

from __future__ import annotations

import os


def default_cache_dir() -> str:
  """Where pretrained backbones and corpora are cached: $PROMPT_TUNING_CACHE, else
  ~/.cache/prompt_tuning (outside any repository)."""
  return os.environ.get("PROMPT_TUNING_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "prompt_tuning"))


def checkpoints_dir(model_dir: str) -> str:
  return os.path.join(os.path.abspath(model_dir), "checkpoints")


def prompts_dir(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, "prompts", f"step_{step}")


def prompt_file(model_dir: str, step: int, param_path: str = "encoder_prompt/prompt") -> str:
  """The exported .npy of one prompt parameter ('/'-joined path) at a step."""
  return os.path.join(prompts_dir(model_dir, step), param_path.replace("/", ".") + ".npy")


def metrics_dir(model_dir: str, name: str) -> str:
  """`train`, `eval` or another evaluation's name."""
  return os.path.join(model_dir, name)


def infer_file(model_dir: str, task: str, split: str, step: int) -> str:
  return os.path.join(model_dir, "infer", f"{task}-{split}-step_{step}.jsonl")


def train_summary(model_dir: str) -> str:
  return os.path.join(model_dir, "train_summary.json")
