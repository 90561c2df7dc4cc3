"""bfloat16 against float32 activations on the CPU: ours and PEFT, in the same run.

The train step of `train_step.py` (T5 1.1-small shapes, the same random
weights, batch 8, inputs 256 + a 100-token prompt, targets 8, dropout 0),
four ways, each in its own process, alternating within each round:

- ours, float32 activations, and ours with `T5Config.dtype='bfloat16'`
  (float32 weights cast at each matmul; the prompt and Adafactor's state
  float32, as T5X does);
- PEFT in float32, and PEFT under `torch.autocast('cpu', torch.bfloat16)`
  (the same split: float32 weights and state, bfloat16 compute).

Also the best 2048^3 matmul in float32 and bfloat16 with XLA and torch, so
that the step ratios can be read against what each library's kernels do.

The ISA decides what bfloat16 buys: with AMX (`amx_bf16`, Intel Sapphire
Rapids and later) XLA's oneDNN path and torch's run bfloat16 matmuls on the
tiles, several times faster than float32 (issue 37's Xeon: XLA 1169-1426
against 289 GFLOP/s, torch 2394 against 342); without it, bfloat16 is
converted to float32 around float32 arithmetic (AVX2), or runs on AVX-512's
bfloat16 dot products (`avx512_bf16`) where a kernel uses them. The table
names the ISA and says whether the AMX target (our bfloat16 step at least
2.5x our float32 step) can be judged on this machine.

Run: python benchmarks/bf16_cpu.py [--rounds 2] (needs the [interop] extra).
Writes results/<machine>/bf16_cpu.json and .md.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script, and as its own child processes
  sys.path.insert(0, ROOT)

from benchmarks import machine, train_step  # noqa: E402

SYSTEMS = ("ours_float32", "ours_bfloat16", "peft_float32", "peft_bfloat16")
AMX_TARGET = 2.5


def isa_flags() -> dict:
  """What the CPU offers for bfloat16 (from /proc/cpuinfo), and the XLA defaults it gets."""
  from prompt_tuning.cli import environment
  flags = environment.cpu_flags()
  return dict(avx2="avx2" in flags, avx512f="avx512f" in flags,
              avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags,
              amx_tile="amx_tile" in flags, amx=environment.has_amx(),
              xla_cpu_defaults=environment.cpu_xla_defaults())


def isa_line(isa: dict) -> str:
  widest = "AVX-512" if isa["avx512f"] else "AVX2" if isa["avx2"] else "no AVX2"
  parts = [widest, "AVX-512 BF16 dot products: " + ("yes" if isa["avx512_bf16"] else "no"),
           "AMX-BF16: " + ("yes" if isa["amx"] else "no")]
  return ", ".join(parts)


def run_system(system: str, warmup: int, timed: int) -> dict:
  who, dtype = system.split("_")
  mem = train_step.Memory()
  if who == "ours":
    step, _, _ = train_step.ours_step(0.0, 8, dtype=dtype)
  else:
    step = train_step.peft_step(0.0, autocast_bf16=dtype == "bfloat16")
  mem.loaded()
  times, losses = [], []
  for i in range(warmup + timed):
    start = time.perf_counter()
    losses.append(step(i))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return dict(step_seconds=times, losses=losses, xla_flags=os.environ.get("XLA_FLAGS", ""))


def run_matmul(lib: str, dtype: str) -> dict:
  n, reps = 2048, 6
  a = np.random.RandomState(0).rand(n, n).astype(np.float32)
  if lib == "xla":
    from prompt_tuning.cli import environment
    environment.configure(compilation_cache=False, tensorflow=False)
    import jax
    import jax.numpy as jnp
    summed = jnp.float32 if dtype == "bfloat16_sum_float32" else None
    x = jnp.asarray(a, "bfloat16" if summed else dtype)
    # bfloat16_sum_float32: bfloat16 operands summed in float32, as layers.einsum does.
    mm = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=summed))
    fn = lambda: mm(x).block_until_ready()  # noqa: E731
  else:
    import torch
    x = torch.from_numpy(a).to(getattr(torch, dtype))
    fn = lambda: x @ x  # noqa: E731
  return dict(gflops=train_step.best_matmul_gflops(fn, n, reps))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--child", nargs="+")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--timed", type=int, default=5)
  parser.add_argument("--note", default="")
  parser.add_argument("--machine", default=None)
  args = parser.parse_args()
  if args.child:
    kind, *rest = args.child
    result = (run_matmul(*rest) if kind == "matmul"
              else run_system(rest[0], args.warmup, args.timed))
    print("RESULT " + json.dumps(result))
    return
  info = train_step.start()
  isa = isa_flags()
  print("ISA:", isa_line(isa), flush=True)
  matmul = {}
  for lib, dtypes in (("xla", ("float32", "bfloat16", "bfloat16_sum_float32")),
                      ("torch", ("float32", "bfloat16"))):
    for dtype in dtypes:
      matmul[f"{lib} {dtype}"] = train_step.spawn_child(__file__, "matmul", lib, dtype)["gflops"]
      print("matmul", lib, dtype, f"{matmul[f'{lib} {dtype}']:.0f} GFLOP/s", flush=True)
  runs, loads = {s: [] for s in SYSTEMS}, []
  for _ in range(args.rounds):
    for system in SYSTEMS:
      extra = ["--warmup", str(args.warmup), "--timed", str(args.timed)]
      out = train_step.spawn_child(__file__, "step", system, *extra)
      runs[system].append(out)
      print(system, f"{np.median(out['step_seconds']):.3f}s", flush=True)
    loads.append(os.getloadavg())
  med = {s: float(np.median([np.median(r["step_seconds"]) for r in rs])) for s, rs in runs.items()}
  summary = dict(cpu=info, isa=isa, load_average_per_round=loads, matmul_gflops=matmul,
                 step_seconds=med,
                 ours_bf16_speedup=med["ours_float32"] / med["ours_bfloat16"],
                 peft_bf16_speedup=med["peft_float32"] / med["peft_bfloat16"],
                 ours_over_peft_float32=med["peft_float32"] / med["ours_float32"],
                 ours_over_peft_bfloat16=med["peft_bfloat16"] / med["ours_bfloat16"],
                 warmup=args.warmup, timed=args.timed)
  from benchmarks import report
  print(report.write("bf16_cpu", dict(summary=summary, runs=runs, rounds=args.rounds,
                                      note=args.note, argv=sys.argv[1:]), args.machine))


def markdown(result: dict) -> str:
  """bf16_cpu.md from its JSON."""
  s = result["summary"]
  info, isa = s["cpu"], s["isa"]
  med = s["step_seconds"]
  tokens = train_step.BATCH * train_step.INPUT_LEN
  lines = ["# bfloat16 against float32 activations on the CPU: ours and PEFT", "",
           f"Machine: {machine.describe(info)}. ISA: {isa_line(isa)}. Load average at start "
           f"{info['load_average'][0]:.1f}, per round "
           + ", ".join(f"{la[0]:.1f}" for la in s["load_average_per_round"]) + ".",
           *([result["note"]] if result["note"] else []), "",
           "`train_step.py`'s dropout-0 step (T5 1.1-small shapes, the same random weights, "
           f"batch {train_step.BATCH}, inputs {train_step.INPUT_LEN} + a "
           f"{train_step.PROMPT_LEN}-token prompt); bfloat16: float32 weights, prompt and "
           "Adafactor state, bfloat16 compute (ours `T5Config.dtype='bfloat16'`, PEFT under "
           "`torch.autocast('cpu', torch.bfloat16)`). Each figure: the median over "
           f"{result['rounds']} alternating rounds (one process each) of the median of "
           f"{s['timed']} steps after {s['warmup']} warm-up. XLA defaults for this CPU: "
           + (" ".join(f"`--{k}={v}`" for k, v in s["isa"]["xla_cpu_defaults"].items()) or "none")
           + f". Rerun: `{train_step.rerun('bf16_cpu.py', result['argv'])}`.", "",
           "| system | float32 step s | bfloat16 step s | bfloat16 speed-up | "
           "input tokens/s (bfloat16) |", "| --- | --- | --- | --- | --- |"]
  for who, name in (("ours", "ours"), ("peft", "HF PEFT")):
    f, b = med[f"{who}_float32"], med[f"{who}_bfloat16"]
    lines.append(f"| {name} | {f:.3f} | {b:.3f} | **{f / b:.2f}x** | {tokens / b:.0f} |")
  lines += ["", f"Ours against PEFT: {s['ours_over_peft_float32']:.2f}x in float32, "
            f"{s['ours_over_peft_bfloat16']:.2f}x in bfloat16.", "",
            "Best 2048^3 matmul in this run: " + ", ".join(
                f"{k.replace('_', ' ')} {v:.0f} GFLOP/s"
                for k, v in s["matmul_gflops"].items()) + ".", ""]
  if isa["amx"]:
    ok = s["ours_bf16_speedup"] >= AMX_TARGET
    lines.append(f"AMX target: our bfloat16 step at least {AMX_TARGET}x our float32 step: "
                 f"{s['ours_bf16_speedup']:.2f}x, {'met' if ok else 'missed'}.")
  else:
    lines.append(f"This CPU has no AMX, so the target (our bfloat16 step at least "
                 f"{AMX_TARGET}x our float32 step on a CPU with AMX) is left for an AMX "
                 "machine; these figures say what bfloat16 does without it.")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
