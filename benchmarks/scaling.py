"""How the prompt-tuning train step scales: prompt length, input length, batch
size, and model size.

T5 1.1 configs with random weights, Adafactor 0.3, dropout 0, targets 8.
Layers are scanned with full rematerialization (`scan_layers=True,
remat_policy='full'`), the layout that keeps long inputs in memory. Each
point: 2 warm-up steps, then the median of 5 timed steps; memory is XLA's
own accounting of the compiled step (arguments + temporaries). The model-size
rows also run in a fresh process each, for peak RSS.

Run: python benchmarks/scaling.py   (about 10 minutes on 2 cores)
Writes results/<machine>/scaling.json and .md.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script, and as its own child processes
  sys.path.insert(0, ROOT)

from benchmarks import machine, report  # noqa: E402

WARMUP, TIMED, TARGET_LEN = 2, 5, 8


def measure(size="small", batch=8, input_len=256, prompt_len=100, weight_dtype="float32"):
  import jax
  import jax.numpy as jnp
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models import presets
  from prompt_tuning.models.t5 import T5, shift_right
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning.runtime import freezing
  from prompt_tuning.train import optimizers
  from prompt_tuning.train import step as step_lib
  cfg = presets.preset("t5_1_1", size, scan_layers=True, remat_policy="full",
                       weight_dtype=weight_dtype)
  prompt = (soft.SoftPrompt(prompt_len, init=initializers.random_uniform(0.5))
            if prompt_len else None)
  model = T5(cfg, encoder_prompt=prompt)
  params = params_lib.init_params(model, jax.random.PRNGKey(0))
  rules = freezing.PROMPT_TUNING_RULES if prompt_len else freezing.FROZEN_RULES
  trainable, frozen = freezing.split(params, freezing.trainable_mask(
      params, rules, require_trainable=bool(prompt_len)))
  opt = optimizers.prompt_tuning_adafactor()
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 32000, size=(batch, input_len)).astype(np.int32)
  enc[:, -1] = 1
  tgt = rng.randint(2, 32000, size=(batch, TARGET_LEN)).astype(np.int32)
  tgt[:, -1] = 1
  b = {"encoder_input_tokens": jnp.asarray(enc), "decoder_target_tokens": jnp.asarray(tgt),
       "decoder_input_tokens": shift_right(jnp.asarray(tgt))}
  if prompt_len:
    fn = jax.jit(step_lib.make_train_step(model, opt), donate_argnums=(0, 1))
    args = [trainable, opt.init(trainable), frozen, b, jax.random.PRNGKey(0)]
  else:  # Nothing to train: the teacher-forced loss alone.
    fn = jax.jit(step_lib.make_eval_step(model))
    args = [trainable, frozen, b]
  compiled = fn.lower(*args).compile()
  mem = compiled.memory_analysis()
  times = []
  for i in range(WARMUP + TIMED):
    start = time.perf_counter()
    out = fn(*args)
    if prompt_len:
      args[0], args[1] = out[0], out[1]
    jax.block_until_ready(out)
    if i >= WARMUP:
      times.append(time.perf_counter() - start)
  step = float(np.median(times))
  return dict(size=size, batch=batch, input_length=input_len, prompt_length=prompt_len,
              weight_dtype=weight_dtype, step_seconds=step,
              input_tokens_per_sec=batch * input_len / step,
              argument_mib=mem.argument_size_in_bytes / 2**20,
              temp_mib=mem.temp_size_in_bytes / 2**20)


def child(kwargs):
  result = measure(**kwargs)
  result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print("RESULT " + json.dumps(result), flush=True)


def main():
  if len(sys.argv) > 2 and sys.argv[1] == "--child":
    child(json.loads(sys.argv[2]))
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  report.add_machine_flag(parser)
  args = parser.parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sweeps = {
      "prompt length": [dict(prompt_len=p) for p in (0, 20, 100, 200)],
      "input length": [dict(input_len=n) for n in (128, 256, 512, 1024)],
      "batch size": [dict(batch=n) for n in (1, 4, 8, 16, 32)],
      "model size": [dict(size="small"), dict(size="base", weight_dtype="bfloat16")],
  }
  results = {}
  for name, points in sweeps.items():
    results[name] = []
    for kwargs in points:
      out = subprocess.run([sys.executable, __file__, "--child", json.dumps(kwargs)],
                           capture_output=True, text=True, check=True).stdout
      results[name].append(json.loads(out.split("RESULT ", 1)[1]))
      print(name, json.dumps(results[name][-1]), flush=True)
  results["machine"] = machine.cpu_info()
  print(report.write("scaling", results, args.machine))


def markdown(results: dict) -> str:
  """scaling.md from its JSON (`main`): one table per sweep."""
  lines = ["# Train-step scaling (CPU, 2 cores)", "",
           "T5 1.1 with random weights, prompt tuning (Adafactor 0.3), dropout 0, targets 8; "
           "scanned layers with full rematerialization. Defaults: small, batch 8, inputs 256, "
           "prompt 100. Medians of 5 steps after 2 warm-up; XLA's memory accounting of the "
           "compiled step; peak RSS of a fresh process per point. Rerun: "
           "`python benchmarks/scaling.py`.", ""]
  for name, rows in results.items():
    if name == "machine":
      continue
    lines += [f"## {name}", "",
              "| size | weights | batch | inputs | prompt | step | input tokens/s | "
              "arguments | temporaries | peak RSS |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
      lines.append(f"| {r['size']} | {r['weight_dtype']} | {r['batch']} | {r['input_length']} "
                   f"| {r['prompt_length']} | {r['step_seconds'] * 1000:.0f} ms | "
                   f"{r['input_tokens_per_sec']:.0f} | {r['argument_mib']:.0f} MiB | "
                   f"{r['temp_mib']:.0f} MiB | {r['peak_rss_mib']:.0f} MiB |")
    lines.append("")
  lines.append("Prompt length 0 has nothing to train: its row is the loss alone (no backward "
               "pass), the floor that a prompt's backward pass adds to.")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
