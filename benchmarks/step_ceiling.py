"""How far ahead of HF PEFT can the CPU train step and greedy decoding be?

Issue 18 asks for 1.2x PEFT's tokens/s at dropout 0, and 1.5x HF's greedy
and beam decoding. Both are bounded by the speed of the weight matmuls, which
no schedule of ours removes. This benchmark measures that bound in one run:

- `xla`: the train step's matmul skeleton in JAX with the binaries' XLA
  defaults: T5 1.1-small's shapes (8 encoder and 8 decoder layers, batch 8,
  256 + 100 prompt positions in, 8 out, the 32128-way logits), every weight
  matmul of the step once forward and once backward into the activations,
  the gradient taken into the prompt alone: the `weights` FLOPs of
  `train_step.step_flops_parts`. Nothing else: no norms, no softmax, no
  loss beyond a mean of squares, no optimizer; attention is replaced by
  `q + mean(k + v)`, which keeps every projection on the gradient's path.
  Timed three ways: weights only; weights plus the real attention (the
  encoder's with a position bias as T5 has it, through
  `layers.attend_one_example_at_a_time`, our CPU kernel; the decoder's
  batched, without a bias); and the encoder's weight matmuls forward only,
  next to our real encoder forward (`T5.encode` with the prompt).
- `torch`: the same skeleton in torch (weights only, and with
  `scaled_dot_product_attention`, the encoder's position bias its
  `attn_mask`, as HF's T5 passes it), the prompt alone requiring a gradient.
- `ours` / `peft`: `train_step.py`'s dropout-0 steps;
  `ours_decode` / `hf_decode`: `inference.py`'s greedy and beam calls.

Every system runs in its own process; they alternate over the rounds and
each figure is the median over rounds of a process's median.

What the figures mean:
- PEFT's step time over the XLA skeleton's is the most our step could lead
  PEFT by if every op other than the weight matmuls took no time at all.
- Greedy (and beam) bound: HF's call time over ours with our encoder pass
  replaced by its weight matmuls alone (ours less our encoder forward plus
  the skeleton's encoder forward): the most we could lead if the encoder
  pass were its matmuls and nothing else, the decoding loop unchanged.

Run: python benchmarks/step_ceiling.py [--rounds 3]
(needs the [interop] extra). Writes results/<machine>/step_ceiling{suffix}.json
and .md; `python -m benchmarks.report` rewrites the .md from the .json.
"""

import argparse
import json
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run as a script, and as its own child processes
  sys.path.insert(0, ROOT)

from benchmarks import inference, machine, report  # noqa: E402
from benchmarks import train_step  # noqa: E402  (shapes, weights, timing)

B, M, T = train_step.BATCH, train_step.INPUT_LEN + train_step.PROMPT_LEN, train_step.TARGET_LEN
H, N, D, F, V, LAYERS = (train_step.H, train_step.N, train_step.D, train_step.F, train_step.V,
                         train_step.LAYERS)
REPEATS = 5
SKELETON_MEASURES = ("weights", "weights_attention", "encoder_forward_weights")


def skeleton_weights(seed: int = 0) -> dict:
  """Random weights in the step's shapes (the values do not matter for speed;
  scaled so that the residual stream stays finite without norms)."""
  rng = np.random.RandomState(seed)

  def w(fan_in, fan_out):
    return (rng.randn(fan_in, fan_out) * (0.5 / np.sqrt(fan_in))).astype(np.float32)

  nd = N * D
  attn = lambda p: {p + "q": w(H, nd), p + "k": w(H, nd), p + "v": w(H, nd),  # noqa: E731
                    p + "o": w(nd, H)}
  mlp = lambda: {"wi_0": w(H, F), "wi_1": w(H, F), "wo": w(F, H)}  # noqa: E731
  return dict(
      enc=[{**attn(""), **mlp()} for _ in range(LAYERS)],
      dec=[{**attn(""), **attn("c"), **mlp()} for _ in range(LAYERS)],
      lm=w(H, V),
      prompt=rng.uniform(-0.5, 0.5, (train_step.PROMPT_LEN, H)).astype(np.float32),
      # T5's relative position bias of the encoder's self-attention, [N, M, M].
      position_bias=rng.randn(N, M, M).astype(np.float32),
      embedded=rng.randn(B, train_step.INPUT_LEN, H).astype(np.float32),
      decoder_embedded=rng.randn(B, T, H).astype(np.float32))


def no_attention(ops, q, k, v, where):
  """Keeps the projections on the gradient's path at next to no cost."""
  del where
  return q + ops.mean1(k + v)


def encoder(ops, w, prompt, attend):
  x = ops.cat([ops.expand(prompt, B), w["embedded"]])
  for e in w["enc"]:
    x = x + attend(ops, x @ e["q"], x @ e["k"], x @ e["v"], "encoder") @ e["o"]
    x = x + (ops.gelu(x @ e["wi_0"]) * (x @ e["wi_1"])) @ e["wo"]
  return x


def step_loss(ops, w, prompt, attend):
  """The step's weight matmuls, in its order; its loss a mean of squared logits."""
  x = encoder(ops, w, prompt, attend)
  y = w["decoder_embedded"]
  for d in w["dec"]:
    y = y + attend(ops, y @ d["q"], y @ d["k"], y @ d["v"], "self") @ d["o"]
    y = y + attend(ops, y @ d["cq"], x @ d["ck"], x @ d["cv"], "cross") @ d["co"]
    y = y + (ops.gelu(y @ d["wi_0"]) * (y @ d["wi_1"])) @ d["wo"]
  return ((y @ w["lm"]) ** 2).mean()


def _heads(x):
  return x.reshape(x.shape[0], x.shape[1], N, D)


def run_xla() -> dict:
  from prompt_tuning.cli import environment
  environment.configure(compilation_cache=False, tensorflow=False)
  import jax
  import jax.numpy as jnp
  train_step.exact_float32_matmuls()
  from prompt_tuning import trees as tree_lib
  from prompt_tuning.models import layers, presets
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts import initializers, soft
  ops = types.SimpleNamespace(cat=lambda xs: jnp.concatenate(xs, axis=1),
                              expand=lambda p, b: jnp.broadcast_to(p, (b, *p.shape)),
                              gelu=lambda x: jax.nn.gelu(x, approximate=True),
                              mean1=lambda x: jnp.mean(x, axis=1, keepdims=True))

  w = jax.tree.map(jnp.asarray, skeleton_weights())
  prompt, position_bias = w.pop("prompt"), w.pop("position_bias")

  def attention(ops, q, k, v, where):
    del ops
    q, k, v = _heads(q), _heads(k), _heads(v)
    if where == "encoder":  # Our CPU kernel, as the model runs it on one CPU device.
      out = layers.attend_one_example_at_a_time(q, k, v, (position_bias,), None, False,
                                                jnp.float32, jnp.float32)
    else:
      weights = jax.nn.softmax(jnp.einsum("blnd,bknd->bnlk", q, k), axis=-1)
      out = jnp.einsum("bnlk,bknd->blnd", weights, v)
    return out.reshape(q.shape[0], q.shape[1], N * D)

  grad_weights = jax.jit(jax.grad(lambda p, w: step_loss(ops, w, p, no_attention)))
  grad_attention = jax.jit(jax.grad(lambda p, w: step_loss(ops, w, p, attention)))
  encoder_weights = jax.jit(lambda p, w: encoder(ops, w, p, no_attention))

  cfg = presets.preset("t5_1_1", "small")
  model = T5(cfg, encoder_prompt=soft.SoftPrompt(length=train_step.PROMPT_LEN,
                                                 init=initializers.random_uniform(0.5)))
  params = tree_lib.unflatten({k: jnp.asarray(v) for k, v in train_step._our_params().items()})
  params["encoder_prompt"] = {"prompt": jnp.asarray(inference._prompt())}
  tokens = jnp.asarray(train_step._batch()[0])
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode)[0])

  def timed(fn):
    return float(np.median(train_step.time_calls(fn, REPEATS)))

  out = dict(
      weights=timed(lambda: grad_weights(prompt, w).block_until_ready()),
      weights_attention=timed(lambda: grad_attention(prompt, w).block_until_ready()),
      encoder_forward_weights=timed(lambda: encoder_weights(prompt, w).block_until_ready()),
      our_encoder_forward=timed(lambda: encode(params, tokens).block_until_ready()))
  g, ga = np.asarray(grad_weights(prompt, w)), np.asarray(grad_attention(prompt, w))
  out.update(gradient_finite=bool(np.isfinite(g).all() and np.isfinite(ga).all()),
             gradient_norm=float(np.linalg.norm(g)),
             gradient_norm_attention=float(np.linalg.norm(ga)),
             jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
  return out


def run_torch() -> dict:
  import torch
  import torch.nn.functional as fn
  torch.manual_seed(0)
  ops = types.SimpleNamespace(cat=lambda xs: torch.cat(xs, dim=1),
                              expand=lambda p, b: p.expand(b, *p.shape),
                              gelu=lambda x: fn.gelu(x, approximate="tanh"),
                              mean1=lambda x: x.mean(dim=1, keepdim=True))

  def attention(ops, q, k, v, where):
    del ops
    q, k, v = (_heads(t).transpose(1, 2) for t in (q, k, v))
    bias = position_bias[None] if where == "encoder" else None
    out = fn.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                          scale=1.0)  # T5: no 1/sqrt(D)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], N * D)

  def to_torch(tree):
    if isinstance(tree, dict):
      return {k: to_torch(v) for k, v in tree.items()}
    if isinstance(tree, list):
      return [to_torch(v) for v in tree]
    return torch.from_numpy(tree)

  w = to_torch(skeleton_weights())
  prompt, position_bias = w.pop("prompt").requires_grad_(True), w.pop("position_bias")

  def grad(attend):
    prompt.grad = None
    step_loss(ops, w, prompt, attend).backward()
    return prompt.grad

  def timed(fn):
    return float(np.median(train_step.time_calls(fn, REPEATS)))

  out = dict(weights=timed(lambda: grad(no_attention)),
             weights_attention=timed(lambda: grad(attention)))
  with torch.no_grad():
    out["encoder_forward_weights"] = timed(lambda: encoder(ops, w, prompt, no_attention))
  g, ga = grad(no_attention).numpy(), grad(attention).numpy()
  out.update(gradient_finite=bool(np.isfinite(g).all() and np.isfinite(ga).all()),
             gradient_norm=float(np.linalg.norm(g)),
             gradient_norm_attention=float(np.linalg.norm(ga)),
             torch=torch.__version__, torch_threads=torch.get_num_threads())
  return out


SYSTEMS = ("xla", "torch", "ours", "peft", "ours_decode", "hf_decode")


def _spawn(system: str) -> dict:
  if system in ("ours", "peft"):
    return train_step.spawn_child(os.path.join(HERE, "train_step.py"), system, 0.0, 8)
  if system in ("ours_decode", "hf_decode"):
    return train_step.spawn_child(os.path.join(HERE, "inference.py"), system.split("_")[0])
  return train_step.spawn_child(__file__, system)


def summarize(runs: dict) -> dict:
  def med(system, key):
    return float(np.median([np.median(r[key]) for r in runs[system]]))

  parts = train_step.step_flops_parts()
  weights_gflop = parts["weights"] / 1e9
  peft_step, ours_step = med("peft", "step_seconds"), med("ours", "step_seconds")
  skeleton = {lib: {k: med(lib, k) for k in SKELETON_MEASURES} for lib in ("xla", "torch")}
  our_encoder = med("xla", "our_encoder_forward")
  xla_encoder = skeleton["xla"]["encoder_forward_weights"]
  decode = {}
  for k in ("greedy", "beam"):
    ours, hf = med("ours_decode", k), med("hf_decode", k)
    decode[k] = dict(ours_seconds=ours, hf_seconds=hf, ratio=hf / ours,
                     bound=hf / (ours - our_encoder + xla_encoder))
  return dict(
      weights_gflop=weights_gflop, step_gflop=sum(parts.values()) / 1e9,
      ours_step_seconds=ours_step, peft_step_seconds=peft_step,
      step_ratio=peft_step / ours_step, skeleton_seconds=skeleton,
      skeleton_weights_gflops={lib: weights_gflop / s["weights"] for lib, s in skeleton.items()},
      step_bound_weights=peft_step / skeleton["xla"]["weights"],
      step_bound_weights_attention=peft_step / skeleton["xla"]["weights_attention"],
      peft_step_over_torch_weights=peft_step / skeleton["torch"]["weights"],
      target_step_seconds=peft_step / 1.2,
      gflops_needed_for_target=weights_gflop / (peft_step / 1.2),
      our_encoder_forward_seconds=our_encoder, decode=decode,
      gradient_norms={lib: runs[lib][0]["gradient_norm"] for lib in ("xla", "torch")},
      gradient_norms_attention={lib: runs[lib][0]["gradient_norm_attention"]
                                for lib in ("xla", "torch")})


def markdown(result: dict) -> str:
  """step_ceiling*.md from its JSON (`main`); the summary is recomputed from the
  runs, so a table written by an older `summarize` is brought up to date."""
  s = summarize(result["runs"])
  info, loads, sk = result["cpu"], result["load_average_per_round"], s["skeleton_seconds"]
  x, t = sk["xla"], sk["torch"]
  lines = [
      "# The ceiling: how far ahead of PEFT the weight matmuls allow", "",
      f"Machine: {machine.describe(info)}. Load average at start "
      f"{info['load_average'][0]:.1f}, per round " + ", ".join(f"{la[0]:.1f}" for la in loads)
      + ".", *([result["note"]] if result["note"] else []), "",
      f"T5 1.1-small shapes, batch {B}, {train_step.INPUT_LEN} + {train_step.PROMPT_LEN} "
      f"positions in, {T} out. Medians over {result['rounds']} alternating rounds, one process "
      f"per system and round (see the docstring of `step_ceiling.py`). Rerun: "
      f"`{train_step.rerun('step_ceiling.py', result['argv'])}`.", "",
      "| measure | XLA (ours) s | torch s |", "| --- | --- | --- |",
      f"| the train step (dropout 0, `train_step.py`): ours / PEFT | {s['ours_step_seconds']:.3f} "
      f"| {s['peft_step_seconds']:.3f} |",
      f"| its weight matmuls alone ({s['weights_gflop']:.0f} GFLOP, forward + input gradients) | "
      f"{x['weights']:.3f} ({s['skeleton_weights_gflops']['xla']:.0f} GFLOP/s) | "
      f"{t['weights']:.3f} ({s['skeleton_weights_gflops']['torch']:.0f} GFLOP/s) |",
      f"| the weight matmuls and attention (the encoder's with a position bias) | "
      f"{x['weights_attention']:.3f} | "
      f"{t['weights_attention']:.3f} |",
      f"| the encoder's weight matmuls, forward only | {x['encoder_forward_weights']:.3f} | "
      f"{t['encoder_forward_weights']:.3f} |",
      f"| our whole encoder forward (`T5.encode`, with the prompt) | "
      f"{s['our_encoder_forward_seconds']:.3f} | |", "",
      f"- Our step runs at **{s['step_ratio']:.2f}x** PEFT's speed. If every op but the weight "
      f"matmuls took no time, it would run at **{s['step_bound_weights']:.2f}x**; with "
      f"attention too, at {s['step_bound_weights_attention']:.2f}x. The target, 1.2x, is a step "
      f"of {s['target_step_seconds']:.3f} s: XLA's weight matmuls alone take {x['weights']:.3f} "
      f"s, which leaves {s['target_step_seconds'] - x['weights']:.3f} s for attention "
      f"({x['weights_attention'] - x['weights']:.3f} s here), the norms, the loss and the "
      "optimizer.",
      f"- PEFT's whole step takes {s['peft_step_over_torch_weights']:.2f}x the time of torch's "
      "weight matmuls alone. Both skeletons compute the same prompt gradient (norms "
      f"{s['gradient_norms']['xla']:.6g} and {s['gradient_norms']['torch']:.6g}; with "
      f"attention {s['gradient_norms_attention']['xla']:.6g} and "
      f"{s['gradient_norms_attention']['torch']:.6g}).",
  ]
  for k, d in s["decode"].items():
    lines.append(
        f"- {k}: ours {d['ours_seconds']:.3f} s, HF {d['hf_seconds']:.3f} s: "
        f"**{d['ratio']:.2f}x**. "
        f"With our encoder pass cut to its weight matmuls alone ({x['encoder_forward_weights']:.3f}"
        f" s instead of {s['our_encoder_forward_seconds']:.3f}), decoding unchanged: "
        f"{d['bound']:.2f}x (target 1.5x).")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--child", choices=("xla", "torch"))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--suffix", default="", help="ends the result's name")
  report.add_machine_flag(parser)
  parser.add_argument("--note", default="")
  args = parser.parse_args()
  if args.child:
    print("RESULT " + json.dumps(run_xla() if args.child == "xla" else run_torch()))
    return
  shown = (*SKELETON_MEASURES, "our_encoder_forward", "step_seconds", "greedy", "beam")
  runs, loads, info = train_step.alternate_rounds(
      SYSTEMS, _spawn, args.rounds,
      lambda r: {k: round(float(np.median(v)), 3) for k, v in r.items() if k in shown})
  for system in ("xla", "torch"):
    if not all(r["gradient_finite"] for r in runs[system]):
      raise RuntimeError(f"the {system} skeleton's prompt gradient is not finite")
  print(report.write(f"step_ceiling{args.suffix}",
                     dict(cpu=info, load_average_per_round=loads, rounds=args.rounds,
                          note=args.note, argv=sys.argv[1:], summary=summarize(runs),
                          runs=runs), args.machine))


if __name__ == "__main__":
  main()
