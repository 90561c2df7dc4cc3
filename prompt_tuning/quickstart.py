"""`prompt-tuning quickstart`: the whole method on a laptop CPU in minutes.

1. Pretrain (or reuse from the cache) a small T5 on the synthetic task
   mixture, every task announced by an instruction ("reverse: cabd" -> "dbac"),
   with the same trainer as prompt tuning (everything trainable). The result
   is written as a T5X-layout (Orbax) checkpoint.
2. Freeze it and train a soft prompt for the held-out format: the bare word
   with no instruction ("cabd" -> "dbac"), evaluating exact match on the
   validation split during training and keeping the best step's prompt
   (MODEL_DIR/best/), as the paper selects its checkpoint.
3. Evaluate exact match on the test split, held out from that selection: no
   prompt, an untrained random prompt, the selected prompt.

The backbones, their pretraining and exact match are the library's
(`prompt_tuning.backbones`); this module is the demo around them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

from prompt_tuning import backbones, decoding, layout
from prompt_tuning.prompts import initializers, soft
from prompt_tuning.runtime import best_prompts
from prompt_tuning.runtime import setup as model_setup
from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, InferenceSpec, ModelSpec
from prompt_tuning.train import loop
from prompt_tuning.train.specs import EvalSpec, ReportSpec

# The split the prompt is selected on during training, and the one reported.
SELECTION_SPLIT = "validation"
REPORT_SPLIT = "test"


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  length: int = 10
  steps: int = 400
  batch_size: int = 32
  seed: int = 0
  # Evaluate on the validation split every `eval_period` steps (and at the
  # last step); its exact match picks the prompt that the test split scores.
  eval_period: int = 100
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
        f"({prompt_cfg.steps} steps; the backbone is frozen), keeping the best of the "
        f"evaluations on {SELECTION_SPLIT} every {prompt_cfg.eval_period} steps", flush=True)
  model_dir = os.path.join(work_dir, "prompt")
  summary = train_prompt(backbone, model_config, prompt_cfg, eval_examples, model_dir,
                         progress)
  backbones.require_finished(summary, prompt_cfg.steps, model_dir, "Prompt tuning")
  # The prompt of the best validation step, from MODEL_DIR/best/ (no checkpoint of it).
  abstract = model_setup.abstract(ModelSpec(model_config, backbone, prompt(sampled)))
  trained, selected_step = best_prompts.load_trainable(model_dir, abstract.trainable)
  selection = best_prompts.read(model_dir)

  print(f"[3/3] Evaluating exact match on {eval_examples} held-out {REPORT_SPLIT} words "
        f"(the prompt of step {selected_step})", flush=True)
  def exact_match(prompt_module, trainable, task_name):
    return backbones.exact_match_of(model_config, backbone, prompt_module, trainable,
                                    task_name, REPORT_SPLIT, eval_examples)

  rows = {
      "no prompt": exact_match(None, None, task),
      "random prompt (untrained)": exact_match(prompt(initializers.random_uniform(0.5)), None,
                                               task),
      "trained prompt": exact_match(prompt(sampled), trained, task),
      "with the instruction (reference)": exact_match(None, None,
                                                      f"synthetic_{synthetic.HELD_OUT}"),
  }
  results = dict(rows=rows, backbone=backbone, prompt_model_dir=model_dir,
                 prompt_file=os.path.join(best_prompts.best_dir(model_dir), os.path.basename(
                     layout.prompt_file(model_dir, selected_step))),
                 split=REPORT_SPLIT,
                 selection=dict(split=SELECTION_SPLIT, step=selected_step,
                                metric=selection["metric"], value=selection["value"],
                                evaluated_steps=_evaluated_steps(model_dir)),
                 pretrain=dataclasses.asdict(pretrain_cfg), prompt=dataclasses.asdict(prompt_cfg),
                 eval_examples=eval_examples, backbone_seconds=round(t_backbone, 1),
                 total_seconds=round(time.time() - start, 1),
                 final_train_loss=summary.get("last_metrics", {}).get("loss"))
  print(format_table(results), flush=True)
  with open(os.path.join(work_dir, "quickstart_results.json"), "w") as f:
    json.dump(results, f, indent=1)
  return results


def train_prompt(backbone: str, model_config: Any, prompt_cfg: PromptConfig,
                 eval_examples: int, model_dir: str, progress: bool = True,
                 log_period: int = 50) -> dict[str, Any]:
  """Trains the quickstart's prompt, keeping the best validation step in MODEL_DIR/best/.

  Returns the run's summary.
  """
  from prompt_tuning.tasks import synthetic
  task = f"synthetic_{synthetic.HELD_OUT}_bare"
  sampled = initializers.sampled_vocab(first_n=259, seed=prompt_cfg.seed)
  spec = ModelSpec(model_config, backbone, soft.SoftPrompt(length=prompt_cfg.length,
                                                           init=sampled))
  # As many validation words as the report scores test words, decoded greedily to at
  # most 8 tokens as the report decodes; the teacher-forced loss (logged, not used to
  # select) over at most 4 batches.
  evaluation = EvalSpec(period=prompt_cfg.eval_period, split=SELECTION_SPLIT,
                        steps=max(1, min(4, eval_examples // prompt_cfg.batch_size)),
                        max_examples=eval_examples,
                        inference=InferenceSpec(decoding=decoding.DecodingConfig(
                            max_decode_length=8)))
  # The best by the task's own metric (exact match), as the paper selects.
  return loop.train(model_dir=model_dir, model=spec,
                    data=DataSpec(task, synthetic.FEATURE_LENGTHS, prompt_cfg.batch_size),
                    train_steps=prompt_cfg.steps,
                    checkpoint=CheckpointSpec(period=prompt_cfg.steps),
                    seed=prompt_cfg.seed,
                    report=ReportSpec(log_period=log_period, progress=progress,
                                      evaluation=evaluation))


def _evaluated_steps(model_dir: str) -> list[int]:
  """The steps evaluated on the validation split (MODEL_DIR/infer_eval/metrics.jsonl)."""
  path = os.path.join(layout.metrics_dir(model_dir, "infer_eval"), "metrics.jsonl")
  with open(path) as f:
    return sorted({json.loads(line)["step"] for line in f if line.strip()})


def format_table(results: dict[str, Any]) -> str:
  lines = [f"\nHeld-out task: reverse a bare word (no instruction); exact match on "
           f"{results['eval_examples']} unseen {results.get('split', 'validation')} words"]
  if results.get("selection"):  # Which prompt the trained row is, and how it was picked.
    sel = results["selection"]
    lines.append(f"selected prompt: step {sel['step']} of {results['prompt']['steps']}, the best "
                 f"{sel['split']} {sel['metric']} ({sel['value']:.1f}%) of the evaluations at "
                 f"steps {', '.join(str(s) for s in sel['evaluated_steps'])}")
  lines += [f"{'setting':34s} exact match",
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
