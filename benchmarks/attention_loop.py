"""Attention one example at a time (`T5Config.attention_example_loop`) against
the batched form, on the train_step benchmark's model and batch.

T5 1.1-small with the same random weights as train_step.py and inference.py,
a 100-token prompt, batch 8, inputs 256 tokens (356 positions with the
prompt). Per setting, in its own process:

- `attention`: one self-attention layer (projections included) on the
  encoder's activations [8, 356, 512] with T5's position bias and the padding
  mask: forward, and forward plus backward into its input;
- `encoder`: the whole encoder with the prompt: forward (what inference
  runs), and forward plus backward into the prompt (what the train step runs
  in the encoder).

The two settings alternate over the rounds; each figure is the median over
rounds of a process's median of REPEATS timed calls after two warm-up calls.
Both settings compute the same values (checked here on the encoder output
and the prompt's gradient; tests/test_attention_loop.py checks it exactly).

Run: python benchmarks/attention_loop.py [--rounds 3]   (writes
results/<machine>/attention_loop{suffix}.json and .md)
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script, and as its own child processes
  sys.path.insert(0, ROOT)

from benchmarks import machine, report, train_step  # noqa: E402  (weights, batch, timing)

REPEATS = 7
SETTINGS = ("loop", "batched")
MEASURES = ("attention_forward", "attention_forward_backward", "encoder_forward",
            "encoder_forward_backward")


def _median_time(fn) -> float:
  return float(np.median(train_step.time_calls(fn, REPEATS)))


def run(setting: str) -> dict:
  from prompt_tuning.cli import environment
  environment.configure(compilation_cache=False, tensorflow=False)
  import jax
  import jax.numpy as jnp
  train_step.exact_float32_matmuls()
  from prompt_tuning import trees as tree_lib
  from prompt_tuning.models import layers, presets
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts import initializers, soft
  loop = setting == "loop"
  cfg = presets.preset("t5_1_1", "small", attention_example_loop=loop)
  model = T5(cfg, encoder_prompt=soft.SoftPrompt(length=train_step.PROMPT_LEN,
                                                 init=initializers.random_uniform(0.5)))
  params = tree_lib.unflatten({k: jnp.asarray(v) for k, v in train_step._our_params().items()})
  prompt = jnp.asarray(np.random.RandomState(1).uniform(
      -0.5, 0.5, (train_step.PROMPT_LEN, cfg.emb_dim)).astype(np.float32))
  tokens = jnp.asarray(train_step._batch()[0])

  def encode(prompt, params, tokens):
    full = dict(params, encoder_prompt={"prompt": prompt})
    return model.apply({"params": full}, tokens, method=model.encode)[0]

  encoder_fwd = jax.jit(encode)
  encoder_grad = jax.jit(jax.grad(lambda *a: jnp.sum(encode(*a) ** 2)))

  # One layer: the first encoder layer's attention weights, position bias and mask.
  b, length = tokens.shape[0], tokens.shape[1] + train_step.PROMPT_LEN
  attention = layers.MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                                        example_loop=loop)
  attention_params = {"params": params["encoder"]["layers_0"]["attention"]}
  positions = jnp.arange(length)
  relpos = layers.RelativePositionBias(num_heads=cfg.num_heads,
                                       num_buckets=cfg.relative_attention_num_buckets,
                                       max_distance=cfg.relative_attention_max_distance,
                                       bidirectional=True)
  position_bias = relpos.apply({"params": params["encoder"]["relpos_bias"]}, positions, positions)
  mask = jnp.concatenate([jnp.ones((b, train_step.PROMPT_LEN), bool), tokens > 0], axis=1)
  bias = (position_bias, layers.mask_to_bias(mask[:, None, :] & mask[:, :, None]))
  x = jnp.asarray(np.random.RandomState(2).randn(b, length, cfg.emb_dim).astype(np.float32))

  def attend(x):
    return attention.apply(attention_params, x, x, bias)

  attention_fwd = jax.jit(attend)
  attention_grad = jax.jit(jax.grad(lambda x: jnp.sum(attend(x) ** 2)))
  out = dict(
      attention_forward=_median_time(lambda: attention_fwd(x).block_until_ready()),
      attention_forward_backward=_median_time(lambda: attention_grad(x).block_until_ready()),
      encoder_forward=_median_time(
          lambda: encoder_fwd(prompt, params, tokens).block_until_ready()),
      encoder_forward_backward=_median_time(
          lambda: encoder_grad(prompt, params, tokens).block_until_ready()))
  out["encoder_output_sum"] = float(jnp.sum(encoder_fwd(prompt, params, tokens)))
  out["prompt_gradient"] = np.asarray(encoder_grad(prompt, params, tokens))[:4, :4].tolist()
  out["jax"] = jax.__version__
  out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  return out


def _spawn(setting: str) -> dict:
  return train_step.spawn_child(__file__, setting)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--child", choices=SETTINGS)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--suffix", default="", help="ends the result's name")
  report.add_machine_flag(parser)
  parser.add_argument("--note", default="")
  args = parser.parse_args()
  if args.child:
    print("RESULT " + json.dumps(run(args.child)))
    return
  runs, loads, info = train_step.alternate_rounds(
      SETTINGS, _spawn, args.rounds, lambda r: {k: round(r[k], 4) for k in MEASURES})
  med = {s: {k: float(np.median([r[k] for r in runs[s]])) for k in MEASURES} for s in SETTINGS}
  loop, batched = runs["loop"][0], runs["batched"][0]
  same = dict(
      encoder_output_sum=(loop["encoder_output_sum"], batched["encoder_output_sum"]),
      prompt_gradient_max_abs_diff=float(np.max(np.abs(
          np.asarray(loop["prompt_gradient"]) - np.asarray(batched["prompt_gradient"])))))
  summary = dict(cpu=info, load_average_per_round=loads, medians_seconds=med, same_values=same,
                 jax=loop["jax"], xla_flags=loop["xla_flags"])
  train_step.save("attention_loop", args, summary, runs)


def markdown(result: dict) -> str:
  """attention_loop*.md from its JSON (`main`)."""
  summary = result["summary"]
  info, loads, med, same = (summary["cpu"], summary["load_average_per_round"],
                            summary["medians_seconds"], summary["same_values"])
  names = dict(attention_forward="one attention layer, forward",
               attention_forward_backward="one attention layer, forward + backward",
               encoder_forward="encoder with the prompt, forward (inference)",
               encoder_forward_backward="encoder with the prompt, forward + backward "
                                        "into the prompt (training)")
  lines = ["# Attention one example at a time vs batched (CPU)", "",
           f"Machine: {machine.describe(info)}. Load average at start "
           f"{info['load_average'][0]:.1f}, per round "
           + ", ".join(f"{l[0]:.1f}" for l in loads) + ".",
           *([result["note"]] if result["note"] else []), "",
           f"T5 1.1-small, the benchmarks' random weights, a {train_step.PROMPT_LEN}-token "
           f"prompt, batch {train_step.BATCH}, inputs {train_step.INPUT_LEN} tokens. "
           f"Milliseconds: median over {result['rounds']} alternating rounds (one process per "
           f"setting and round) of the median of {REPEATS} timed calls after warm-up. "
           f"`loop`: `T5Config.attention_example_loop=True` (the default on one CPU device); "
           f"`batched`: `False`. XLA flags: `{summary['xla_flags']}`; jax {summary['jax']}. "
           f"Rerun: `{train_step.rerun('attention_loop.py', result['argv'])}`.", "",
           "| measure | loop ms | batched ms | batched / loop |", "| --- | --- | --- | --- |"]
  for k in MEASURES:
    lines.append(f"| {names[k]} | {1e3 * med['loop'][k]:.1f} | {1e3 * med['batched'][k]:.1f} | "
                 f"**{med['batched'][k] / med['loop'][k]:.2f}x** |")
  lines += ["", f"Same values: encoder output sums {same['encoder_output_sum'][0]:.6g} (loop) "
            f"and {same['encoder_output_sum'][1]:.6g} (batched); the prompt gradient's "
            f"first entries differ by at most {same['prompt_gradient_max_abs_diff']:.2g}.", ""]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
