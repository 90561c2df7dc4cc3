"""Microbatches (NUM_MICROBATCHES = k) on T5 1.1-small shapes: step time and memory.

One global batch, the paper's Adafactor and a 100-token prompt, dropout 0;
the train step with its gradient computed in k = 1, 2, 4, 8 parts
(`LossSpec.num_microbatches`). Each k runs in a fresh process, so its peak
RSS is its own; XLA's accounting of the compiled step (temporaries) is
recorded beside it. Each point: 1 warm-up step, then the median of
`--timed` steps. Random weights (shapes are what matter here).

Run: python benchmarks/microbatches.py [--batch 32 --input_length 512 --ks 1,2,4,8]
Writes results/<machine>/microbatches.json and .md. `--dry_run` measures a
tiny model in this process and writes into `--out_dir` (a smoke test).
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

TARGET_LEN = 16


def measure(k, size="small", batch=32, input_len=512, prompt_len=100, timed=3):
  """One k's step: median seconds, XLA temporaries, input tokens/s."""
  import jax
  import jax.numpy as jnp
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models import presets
  from prompt_tuning.models.t5 import T5, T5Config, shift_right
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning.runtime import freezing
  from prompt_tuning.train import optimizers
  from prompt_tuning.train import step as step_lib
  cfg = (T5Config(vocab_size=512, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1) if size == "tiny"
         else presets.preset("t5_1_1", size))
  model = T5(cfg, encoder_prompt=soft.SoftPrompt(prompt_len,
                                                 init=initializers.random_uniform(0.5)))
  params = params_lib.init_params(model, jax.random.PRNGKey(0))
  trainable, frozen = freezing.split(params, freezing.trainable_mask(
      params, freezing.PROMPT_TUNING_RULES))
  opt = optimizers.prompt_tuning_adafactor()
  rng = np.random.RandomState(0)
  enc = rng.randint(2, cfg.vocab_size, size=(batch, input_len)).astype(np.int32)
  tgt = rng.randint(2, cfg.vocab_size, size=(batch, TARGET_LEN)).astype(np.int32)
  enc[:, -1] = tgt[:, -1] = 1
  b = {"encoder_input_tokens": jnp.asarray(enc), "decoder_target_tokens": jnp.asarray(tgt),
       "decoder_input_tokens": shift_right(jnp.asarray(tgt)),
       "decoder_loss_weights": jnp.ones(tgt.shape, jnp.float32)}
  fn = jax.jit(step_lib.make_train_step(model, opt, num_microbatches=k),
               donate_argnums=(0, 1))
  args = [trainable, opt.init(trainable), frozen, b, jax.random.PRNGKey(0)]
  mem = fn.lower(*args).compile().memory_analysis()
  times = []
  for i in range(1 + timed):
    start = time.perf_counter()
    out = fn(*args)
    args[0], args[1] = out[0], out[1]
    jax.block_until_ready(out)
    if i:
      times.append(time.perf_counter() - start)
  step = float(np.median(times))
  return dict(num_microbatches=k, size=size, batch=batch, input_length=input_len,
              prompt_length=prompt_len, step_seconds=step,
              input_tokens_per_sec=batch * input_len / step,
              temp_mib=(mem.temp_size_in_bytes / 2**20) if mem is not None else None,
              loss=float(out[2]["loss"]))


def _peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
  parser.add_argument("--input_length", type=int, default=512, help="inputs (default 512)")
  parser.add_argument("--ks", default="1,2,4,8", help="microbatch counts (default 1,2,4,8)")
  parser.add_argument("--timed", type=int, default=3, help="timed steps per k (default 3)")
  parser.add_argument("--dry_run", action="store_true",
                      help="a tiny model in this process, written to --out_dir (smoke test)")
  parser.add_argument("--out_dir", default=None, help="write here instead of results/")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  report.add_machine_flag(parser)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse(argv)
  if args.child:
    result = measure(**json.loads(args.child))
    result["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)
    return 0
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  ks = [int(k) for k in args.ks.split(",")]
  rows = []
  for k in ks:
    kwargs = dict(k=k, batch=args.batch, input_len=args.input_length, timed=args.timed)
    if args.dry_run:  # One process: RSS is the process's so far, not this k's.
      row = measure(size="tiny", prompt_len=4, **kwargs)
      row["peak_rss_mib"] = _peak_rss_mib()
    else:
      out = subprocess.run([sys.executable, __file__, "--child", json.dumps(kwargs)],
                           capture_output=True, text=True, check=True).stdout
      row = json.loads(out.split("RESULT ", 1)[1])
    rows.append(row)
    print(json.dumps(row), flush=True)
  result = dict(rows=rows, machine=machine.cpu_info(), dry_run=args.dry_run,
                command="python benchmarks/microbatches.py " + " ".join(
                    a for a in (argv if argv is not None else sys.argv[1:])))
  print(report.write("microbatches", result, args.machine, out_dir=args.out_dir))
  return 0


def markdown(result: dict) -> str:
  """microbatches.md from its JSON (`main`)."""
  lines = ["# Microbatches: step time and memory against NUM_MICROBATCHES", "",
           f"{machine.describe(result['machine'])}. Prompt tuning (100-token prompt, Adafactor "
           "0.3, dropout 0) on T5 1.1-small shapes with random weights; one global batch "
           "whose gradient is computed in k parts with one update. Peak RSS of a fresh "
           "process per k; XLA's temporaries of the compiled step. Rerun: "
           f"`{result.get('command', 'python benchmarks/microbatches.py')}`.", "",
           "| k | batch | inputs | step | input tokens/s | XLA temporaries | peak RSS |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in result["rows"]:
    temp = f"{r['temp_mib']:.0f} MiB" if r.get("temp_mib") is not None else "n/a"
    lines.append(f"| {r['num_microbatches']} | {r['batch']} | {r['input_length']} | "
                 f"{r['step_seconds'] * 1000:.0f} ms | {r['input_tokens_per_sec']:.0f} | "
                 f"{temp} | {r['peak_rss_mib']:.0f} MiB |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
