"""`prompt-tuning quickstart`: the whole method on a laptop CPU in minutes.

1. Pretrain (or reuse from the cache) a small T5 on the synthetic task
   mixture, every task announced by an instruction ("reverse: cabd" -> "dbac"),
   with the same trainer as prompt tuning (everything trainable). The result
   is written as a T5X-layout (Orbax) checkpoint.
2. Freeze it and train a soft prompt for the held-out format: the bare word
   with no instruction ("cabd" -> "dbac").
3. Evaluate exact match on held-out words: no prompt, an untrained random
   prompt, the trained prompt.

The backbones, their pretraining and exact match are the library's
(`prompt_tuning.backbones`); this module is the demo around them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

from prompt_tuning import backbones, layout
from prompt_tuning.prompts import initializers, soft
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, ModelSpec
from prompt_tuning.train import loop
from prompt_tuning.train.specs import ReportSpec


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  length: int = 10
  steps: int = 400
  batch_size: int = 32
  seed: int = 0
  # Activations of prompt tuning and evaluation: "bfloat16" computes in
  # bfloat16 with the prompt and its optimizer state in float32, as T5X does.
  dtype: str = "float32"


def run(cache_dir: Optional[str] = None,
        pretrain_cfg: backbones.PretrainConfig = backbones.quickstart_pretrain_config(),
        prompt_cfg: PromptConfig = PromptConfig(), eval_examples: int = 512,
        work_dir: Optional[str] = None, progress: bool = True) -> dict[str, Any]:
  """The quickstart; returns (and prints) the results table."""
  import tempfile
  from prompt_tuning.tasks import synthetic
  start = time.time()
  cache_dir = cache_dir or backbones.default_cache_dir()
  print(f"[1/3] Backbone: T5 '{pretrain_cfg.size}' pretrained on synthetic_pretrain "
        f"({pretrain_cfg.steps} steps), cached under {cache_dir}", flush=True)
  backbone = backbones.pretrain(pretrain_cfg, cache_dir, progress)
  t_backbone = time.time() - start
  model_config = backbones.backbone_config(pretrain_cfg.size).replace(dtype=prompt_cfg.dtype)
  task = f"synthetic_{synthetic.HELD_OUT}_bare"
  work_dir = work_dir or tempfile.mkdtemp(prefix="quickstart_")

  def prompt(init):
    return soft.SoftPrompt(length=prompt_cfg.length, init=init)

  sampled = initializers.sampled_vocab(first_n=259, seed=prompt_cfg.seed)
  print(f"[2/3] Prompt tuning a {prompt_cfg.length}-token prompt on {task} "
        f"({prompt_cfg.steps} steps; the backbone is frozen)", flush=True)
  model_dir = os.path.join(work_dir, "prompt")
  spec = ModelSpec(model_config, backbone, prompt(sampled))
  summary = loop.train(model_dir=model_dir, model=spec,
                       data=DataSpec(task, synthetic.FEATURE_LENGTHS, prompt_cfg.batch_size),
                       train_steps=prompt_cfg.steps,
                       checkpoint=CheckpointSpec(period=prompt_cfg.steps), seed=prompt_cfg.seed,
                       report=ReportSpec(log_period=50, progress=progress))
  backbones.require_finished(summary, prompt_cfg.steps, model_dir, "Prompt tuning")
  store = checkpoints_lib.CheckpointStore(model_dir)
  trained = store.restore_trainable(model_setup.abstract(spec).trainable)
  store.close()

  print(f"[3/3] Evaluating exact match on {eval_examples} held-out words", flush=True)
  def exact_match(prompt_module, trainable, task_name):
    return backbones.exact_match_of(model_config, backbone, prompt_module, trainable,
                                    task_name, "validation", eval_examples)

  rows = {
      "no prompt": exact_match(None, None, task),
      "random prompt (untrained)": exact_match(prompt(initializers.random_uniform(0.5)), None,
                                               task),
      "trained prompt": exact_match(prompt(sampled), trained, task),
      "with the instruction (reference)": exact_match(None, None,
                                                      f"synthetic_{synthetic.HELD_OUT}"),
  }
  results = dict(rows=rows, backbone=backbone, prompt_model_dir=model_dir,
                 prompt_file=layout.prompt_file(model_dir, prompt_cfg.steps),
                 pretrain=dataclasses.asdict(pretrain_cfg), prompt=dataclasses.asdict(prompt_cfg),
                 eval_examples=eval_examples, backbone_seconds=round(t_backbone, 1),
                 total_seconds=round(time.time() - start, 1),
                 final_train_loss=summary.get("last_metrics", {}).get("loss"))
  print(format_table(results), flush=True)
  with open(os.path.join(work_dir, "quickstart_results.json"), "w") as f:
    json.dump(results, f, indent=1)
  return results


def format_table(results: dict[str, Any]) -> str:
  lines = [f"\nHeld-out task: reverse a bare word (no instruction); exact match on "
           f"{results['eval_examples']} unseen words",
           f"{'setting':34s} exact match",
           f"{'-' * 34} -----------"]
  lines += [f"{name:34s} {value:10.1f}%" for name, value in results["rows"].items()]
  lines.append(f"(total {results['total_seconds']:.0f} s, of which backbone "
               f"{results['backbone_seconds']:.0f} s)")
  if results.get("prompt_file"):  # Where things are, and what to try with them.
    lines += [f"\nbackbone (a T5X checkpoint folder): {results['backbone']}",
              f"trained prompt: {results['prompt_file']}",
              "next, serve it over HTTP (pip install -e '.[serve]'):",
              f"  prompt-tuning serve {results['backbone']} "
              f"--prompt reverse={results['prompt_file']}"]
  return "\n".join(lines)
