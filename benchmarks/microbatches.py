"""Microbatches (NUM_MICROBATCHES = k) on T5 1.1-small shapes: step time and memory.

One global batch, the paper's Adafactor and a 100-token prompt, dropout 0;
the train step with its gradient computed in k = 1, 2, 4, 8 parts
(`LossSpec.num_microbatches`). Each k runs in a fresh process, so its peak
RSS is its own; XLA's accounting of the compiled step (temporaries) is
recorded beside it. Each point: 1 warm-up step, then the median of
`--timed` steps. Random weights (shapes are what matter here).

The processes alternate: `--rounds` rounds, each running every k once (in
reverse order every other round), so that a change of the machine's load
falls on every k alike; each k's time is also given as a ratio to k = 1's in
the same round (the median over rounds).

`--eval_cost` also measures evaluation during training at the quickstart's
size (its tiny backbone, batch 32, 10-token prompt, the quickstart's
EvalSpec): the seconds of one evaluation period (teacher-forced batches plus
decoding the validation words) against one train step, from one
`loop.train` run in a fresh process.

Run: python benchmarks/microbatches.py [--batch 32 --input_length 512 --ks 1,2,4,8]
Writes results/<machine>/microbatches.json and .md (after every round, so a
cut-short run keeps its finished rounds). `--dry_run` measures a tiny model
in this process and writes into `--out_dir` (a smoke test).
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


def measure_eval_cost(steps=120, eval_period=40, log_period=10, eval_examples=512):
  """Evaluation during training at the quickstart's size: seconds per period and per step.

  One run of `steps` prompt-tuning steps evaluating every `eval_period`; each
  evaluation is timed (the first compiles its programs), and the train step's
  time comes from the logged windows that hold no evaluation and no compile.
  The backbone is the quickstart's tiny architecture pretrained for 2 steps
  (the weights change what is decoded, not the programs' cost: decoding runs
  to at most 8 tokens).
  """
  import tempfile
  from prompt_tuning import backbones, quickstart
  from prompt_tuning.train import evaluator as evaluator_lib
  root = tempfile.mkdtemp(prefix="eval_cost_")
  pretrain = backbones.PretrainConfig(size="tiny", steps=2)
  prompt_cfg = quickstart.PromptConfig(steps=steps, eval_period=eval_period)
  durations = []
  evaluate = evaluator_lib.Evaluator.__call__

  def timed(self, step, *args, **kwargs):
    start = time.perf_counter()
    out = evaluate(self, step, *args, **kwargs)
    durations.append(dict(step=step, seconds=time.perf_counter() - start))
    return out

  evaluator_lib.Evaluator.__call__ = timed
  try:
    summary = quickstart.train_prompt(backbones.pretrain(pretrain, root, progress=False),
                                      backbones.backbone_config("tiny"), prompt_cfg,
                                      eval_examples, os.path.join(root, "prompt"),
                                      progress=False, log_period=log_period)
  finally:
    evaluator_lib.Evaluator.__call__ = evaluate
  with open(os.path.join(root, "prompt", "train", "metrics.jsonl")) as f:
    windows = [json.loads(line) for line in f]
  eval_steps = [d["step"] for d in durations]
  # Step w's metrics are logged after step w + 1 starts (fetched one step late), so
  # the window logged at w holds the evaluations at steps (w - log_period, w]. Clean
  # windows hold none, nor the first step's compile, nor the last step's save.
  clean = [w for w in windows if log_period < w["step"] < steps
           and not any(w["step"] - log_period < e <= w["step"] for e in eval_steps)]
  step_seconds = float(np.median([1.0 / w["steps_per_sec"] for w in clean]))
  later = [d["seconds"] for d in durations[1:]]
  period_seconds = float(np.median(later))
  return dict(train_steps=steps, eval_period=eval_period, eval_examples=eval_examples,
              batch=prompt_cfg.batch_size, prompt_length=prompt_cfg.length,
              evaluations=durations, clean_windows=len(clean),
              train_step_seconds=step_seconds, eval_period_seconds=period_seconds,
              first_eval_seconds=durations[0]["seconds"],
              eval_period_in_train_steps=period_seconds / step_seconds,
              final_step=summary.get("step"))


def _peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
  parser.add_argument("--input_length", type=int, default=512, help="inputs (default 512)")
  parser.add_argument("--ks", default="1,2,4,8", help="microbatch counts (default 1,2,4,8)")
  parser.add_argument("--timed", type=int, default=3, help="timed steps per k (default 3)")
  parser.add_argument("--rounds", type=int, default=1,
                      help="rounds of one fresh process per k, alternating order (default 1)")
  parser.add_argument("--eval_cost", action="store_true",
                      help="also time one evaluation period against one train step at the "
                           "quickstart's size")
  parser.add_argument("--dry_run", action="store_true",
                      help="a tiny model in this process, written to --out_dir (smoke test)")
  parser.add_argument("--out_dir", default=None, help="write here instead of results/")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  report.add_machine_flag(parser)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse(argv)
  if args.child:
    kwargs = json.loads(args.child)
    result = measure_eval_cost() if kwargs.pop("eval_cost", False) else measure(**kwargs)
    result["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)
    return 0
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  ks = [int(k) for k in args.ks.split(",")]
  command = "python benchmarks/microbatches.py " + " ".join(
      a for a in (argv if argv is not None else sys.argv[1:]))
  runs, eval_cost = [], None

  def child(kwargs):
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(kwargs)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.split("RESULT ", 1)[1])

  def save(finished_rounds):
    result = dict(rows=summarize(runs, ks), runs=runs, rounds=finished_rounds,
                  machine=machine.cpu_info(), dry_run=args.dry_run, command=command,
                  load_average=list(os.getloadavg()))
    if eval_cost is not None:
      result["eval_cost"] = eval_cost
    return report.write("microbatches", result, args.machine, out_dir=args.out_dir)

  if args.eval_cost:  # First: the rounds after it may be cut short.
    eval_cost = child(dict(eval_cost=True))
    print(json.dumps(eval_cost), flush=True)
  for round_ in range(args.rounds):
    for k in (ks if round_ % 2 == 0 else ks[::-1]):  # Alternate: load drifts hit every k.
      kwargs = dict(k=k, batch=args.batch, input_len=args.input_length, timed=args.timed)
      if args.dry_run:  # One process: RSS is the process's so far, not this k's.
        row = measure(size="tiny", prompt_len=4, **kwargs)
        row["peak_rss_mib"] = _peak_rss_mib()
      else:
        row = child(kwargs)
      row["round"] = round_
      runs.append(row)
      print(json.dumps(row), flush=True)
    print(save(round_ + 1), flush=True)
  return 0


def summarize(runs: list, ks: list) -> list:
  """One row per k: medians over rounds, and the step's ratio to k = 1 in its round."""
  rows = []
  for k in ks:
    mine = [r for r in runs if r["num_microbatches"] == k]
    if not mine:
      continue
    row = dict(mine[0])
    row.pop("round", None)
    for key in ("step_seconds", "input_tokens_per_sec", "peak_rss_mib"):
      row[key] = float(np.median([r[key] for r in mine]))
    ratios = []
    for r in mine:
      base = [b for b in runs if b["num_microbatches"] == ks[0] and b["round"] == r["round"]]
      if base:
        ratios.append(r["step_seconds"] / base[0]["step_seconds"])
    row["step_ratio"] = float(np.median(ratios)) if ratios else None
    row["rounds"] = len(mine)
    rows.append(row)
  return rows


def markdown(result: dict) -> str:
  """microbatches.md from its JSON (`main`)."""
  lines = ["# Microbatches: step time and memory against NUM_MICROBATCHES", "",
           f"{machine.describe(result['machine'])}. Prompt tuning (100-token prompt, Adafactor "
           "0.3, dropout 0) on T5 1.1-small shapes with random weights; one global batch "
           "whose gradient is computed in k parts with one update. Peak RSS of a fresh "
           "process per k; XLA's temporaries of the compiled step. Rerun: "
           f"`{result.get('command', 'python benchmarks/microbatches.py')}`.", "",
           "| k | batch | inputs | step | input tokens/s | XLA temporaries | peak RSS | "
           "step / k=1's |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in result["rows"]:
    temp = f"{r['temp_mib']:.0f} MiB" if r.get("temp_mib") is not None else "n/a"
    ratio = f"{r['step_ratio']:.2f}" if r.get("step_ratio") is not None else "n/a"
    lines.append(f"| {r['num_microbatches']} | {r['batch']} | {r['input_length']} | "
                 f"{r['step_seconds'] * 1000:.0f} ms | {r['input_tokens_per_sec']:.0f} | "
                 f"{temp} | {r['peak_rss_mib']:.0f} MiB | {ratio} |")
  rounds = result.get("rounds", 1)
  lines += ["", f"Medians over {rounds} round(s) of one fresh process per k, alternating "
            f"order; the ratio is to k = 1 in the same round. Load average at the end: "
            f"{', '.join(f'{x:.1f}' for x in result.get('load_average', []))}."]
  cost = result.get("eval_cost")
  if cost:
    lines += ["", "## Evaluation during training: its cost per period", "",
              f"At the quickstart's size (tiny backbone, batch {cost['batch']}, "
              f"{cost['prompt_length']}-token prompt; the quickstart's EvalSpec: "
              f"teacher-forced batches and {cost['eval_examples']} validation words decoded, "
              f"at most 8 tokens), one run of {cost['train_steps']} steps evaluating every "
              f"{cost['eval_period']}:", "",
              "| train step | one evaluation period | period / step | first evaluation "
              "(compiles) |", "| --- | --- | --- | --- |",
              f"| {cost['train_step_seconds'] * 1000:.0f} ms | "
              f"{cost['eval_period_seconds']:.2f} s | {cost['eval_period_in_train_steps']:.0f} "
              f"steps | {cost['first_eval_seconds']:.1f} s |"]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
