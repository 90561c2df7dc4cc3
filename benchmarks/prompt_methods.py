"""Mixed-prompt batches: the train step with a prompt bank and a batch that
mixes 8 prompts, against the same step with one soft prompt (same batch size,
lengths and backbone shape). The two alternate round by round; medians are
reported, with the CPU model and ISA.

Accuracy and trainable parameters of every prompt method live in the research
suite (`python -m benchmarks.research`, results in research.md): its held-out
formats separate the methods. This script's earlier accuracy table used a task
on which every method scored 98-100%, so it could not rank them, and was
dropped.

Run: python benchmarks/prompt_methods.py   (about 2 minutes on 2 cores)
Writes results/<machine>/prompt_methods.json and .md.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import machine, report  # noqa: E402

PROMPT_LEN = 10
# The quickstart's `small` backbone shape (random weights: speed only).
BACKBONE_SIZE = "small"


def throughput(cfg, rounds=5, steps=10, batch=32, input_len=64, num_prompts=8):
  """Median step time, one soft prompt vs a bank with 8 prompts mixed in the batch."""
  import jax
  import jax.numpy as jnp
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5, shift_right
  from prompt_tuning.prompts import multi_task, soft
  from prompt_tuning.runtime import freezing
  from prompt_tuning.train import optimizers
  from prompt_tuning.train import step as step_lib
  rng = np.random.RandomState(0)
  enc = rng.randint(3, 259, size=(batch, input_len)).astype(np.int32)
  enc[:, -1] = 1
  tgt = rng.randint(3, 259, size=(batch, 8)).astype(np.int32)
  base = {"encoder_input_tokens": jnp.asarray(enc), "decoder_target_tokens": jnp.asarray(tgt),
          "decoder_input_tokens": shift_right(jnp.asarray(tgt))}
  variants = {
      "one soft prompt": (soft.SoftPrompt(PROMPT_LEN), base),
      f"prompt bank, {num_prompts} prompts mixed": (
          multi_task.PromptBank(num_prompts, PROMPT_LEN),
          dict(base, task_index=jnp.asarray(np.arange(batch) % num_prompts, jnp.int32))),
  }
  compiled = {}
  for name, (prompt, b) in variants.items():
    model = T5(cfg, encoder_prompt=prompt)
    params = params_lib.init_params(model, jax.random.PRNGKey(0))
    trainable, frozen = freezing.split(params, freezing.trainable_mask(
        params, freezing.PROMPT_TUNING_RULES))
    opt = optimizers.prompt_tuning_adafactor()
    fn = jax.jit(step_lib.make_train_step(model, opt), donate_argnums=(0, 1))
    state = [trainable, opt.init(trainable)]
    for _ in range(3):
      state[0], state[1], m = fn(state[0], state[1], frozen, b, jax.random.PRNGKey(0))
    jax.block_until_ready(m)
    compiled[name] = (fn, state, frozen, b)
  times = {name: [] for name in variants}
  for _ in range(rounds):
    for name, (fn, state, frozen, b) in compiled.items():
      start = time.perf_counter()
      for _ in range(steps):
        state[0], state[1], m = fn(state[0], state[1], frozen, b, jax.random.PRNGKey(0))
      jax.block_until_ready(m)
      times[name].append((time.perf_counter() - start) / steps)
  medians = {k: float(np.median(v)) for k, v in times.items()}
  single, mixed = medians["one soft prompt"], medians[f"prompt bank, {num_prompts} prompts mixed"]
  return dict(batch=batch, input_length=input_len, prompt_length=PROMPT_LEN, rounds=rounds,
              steps_per_round=steps, seconds_per_step=medians,
              mixed_over_single_throughput=single / mixed)


def markdown(results: dict) -> str:
  """prompt_methods.md from its JSON (`main`)."""
  t = results["throughput"]
  lines = [
      "# Mixed-prompt batches",
      "",
      "Written by `python benchmarks/prompt_methods.py` (raw figures in "
      f"`prompt_methods.json`) on {machine.describe(results['machine'])}.",
      "",
      "Accuracy and trainable parameters of every prompt method: see `research.md` (the "
      "research suite, whose held-out formats separate the methods).",
      "",
      f"Train step on the quickstart's `{BACKBONE_SIZE}` backbone shape with random weights, "
      f"batch {t['batch']}, inputs {t['input_length']} + a {t['prompt_length']}-token prompt; "
      f"medians of {t['rounds']} alternating rounds of {t['steps_per_round']} steps.",
      "",
      "| batch | seconds per step |",
      "| --- | --- |",
  ]
  for name, s in t["seconds_per_step"].items():
    lines.append(f"| {name} | {s * 1000:.1f} ms |")
  lines += ["", f"Mixed batch throughput: **{t['mixed_over_single_throughput']:.3f}x** the "
            "single-prompt batch (target: within 10%, i.e. at least 0.90x).", ""]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  report.add_machine_flag(parser)
  args = parser.parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import logging
  logging.basicConfig(level=logging.WARNING)
  from prompt_tuning import backbones
  info = machine.cpu_info()
  print(machine.describe(info), flush=True)
  results = {"machine": info,
             "throughput": throughput(backbones.backbone_config(BACKBONE_SIZE))}
  print(json.dumps(results["throughput"]), flush=True)
  report.write("prompt_methods", results, args.machine)


if __name__ == "__main__":
  main()
