"""Where the train step's time goes: our step's per-op profile next to PEFT's.

The dropout-0 step of `train_step.py` (same weights, batch and shapes), each
system in its own process, the two alternating over the rounds:

- ours: `jax.profiler` with XLA:CPU's per-thunk trace events
  (`--xla_cpu_enable_xprof_traceme=true`); each thunk is put in a category
  from the compiled HLO: what its instruction (or the fusion's body)
  computes;
- PEFT: `torch.profiler`, each aten op's self time, put in the same
  categories.

Categories: matmul (the weight matmuls, with whatever XLA fused into them),
attention (the score and value matmuls: batched dots in XLA; in torch
`bmm` or the fused scaled-dot-product kernels), layout (transposes and
copies), reductions (softmax, RMS norms, the loss), elementwise (everything
else: activations, masks, residuals, the optimizer's arithmetic), rng
(dropout draws; none at dropout 0).

The op times are the time each op ran on the thread that ran it; XLA may
run two independent thunks at once on two cores, so the ops can sum to more
than the step. Figures per step, median over rounds of the mean over
PROFILED steps. The rates are the analytic FLOPs of the step's weight
matmuls and of its attention (`train_step.step_flops_parts`) over the time
in those ops: how fast each system's GEMMs run inside the step.

Run: python benchmarks/step_profile.py [--rounds 3]
(needs the [interop] extra). Writes results/<machine>/step_profile{suffix}.json
and .md; `python -m benchmarks.report` rewrites the .md from the .json.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script, and as its own child processes
  sys.path.insert(0, ROOT)

from benchmarks import machine, report, train_step  # noqa: E402  (the same step and weights)
from prompt_tuning.cli import environment  # noqa: E402  (imports no JAX)

WARMUP, PROFILED = 2, 3
CATEGORIES = ("matmul", "attention", "layout", "reductions", "elementwise", "rng", "other")


# HLO op kinds by category, heaviest first: a fusion takes the category of
# the heaviest kind its called computations hold; "batched-dot" is a dot with
# batch dimensions (attention's score and value matmuls).
_HLO_CATEGORIES = (("attention", {"batched-dot"}),
                   ("matmul", {"dot", "convolution"}),
                   ("rng", {"rng", "rng-bit-generator", "threefry2x32"}),
                   ("reductions", {"reduce", "reduce-window"}),
                   ("layout", {"transpose", "copy"}))
# Instructions that run no op of their own.
_HLO_NO_OP = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}


def hlo_categories(hlo_text: str) -> dict:
  """Category of each instruction name in a compiled HLO module's text
  (`_HLO_CATEGORIES`; anything else is elementwise)."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$", line)
    if head:
      current = computations.setdefault(head.group(1), [])
      continue
    if current is not None and "=" in line:
      current.append(line)

  def kind(line: str) -> str:
    op = re.search(r"=\s*\S+(?:\s*\{[^}]*\})?\s+([\w\-]+)\(", line)
    if op and op.group(1) == "dot" and "lhs_batch_dims" in line:
      return "batched-dot"
    return op.group(1) if op else ""

  def category_of(kinds: set) -> str:
    for category, ops in _HLO_CATEGORIES:
      if kinds & ops:
        return category
    return "elementwise"

  def kinds_in(name: str, seen=()) -> set:
    """The op kinds of a computation and of the computations it calls."""
    found = set()
    for line in computations.get(name, ()):
      found.add(kind(line))
      for callee in re.findall(r"calls=%?([\w.\-]+)", line):
        if callee not in seen:
          found |= kinds_in(callee, seen + (name,))
    return found

  categories = {}
  for lines in computations.values():
    for line in lines:
      name = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", line)
      k = kind(line)
      if not name or k in _HLO_NO_OP:
        continue
      if k == "fusion":
        callee = re.search(r"calls=%?([\w.\-]+)", line)
        categories[name.group(1)] = category_of(kinds_in(callee.group(1))) if callee else "other"
      else:
        categories[name.group(1)] = category_of({k})
  return categories


def profile_ours() -> dict:
  flag = "--xla_cpu_enable_xprof_traceme=true"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  step, jitted, args = train_step.ours_step(0.0, 8)
  import jax
  categories = hlo_categories(jitted.lower(*args(0)).compile().as_text())
  for i in range(WARMUP):
    step(i)
  trace_dir = tempfile.mkdtemp(prefix="step_profile_")
  start = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for i in range(PROFILED):
      step(WARMUP + i)
  wall = (time.perf_counter() - start) / PROFILED
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_category, per_op = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    category = categories.get(e["name"])
    if category is None:
      continue  # Runtime events (executor waits, Python frames), not ops.
    per_category[category] += e["dur"] / 1e6 / PROFILED
    per_op[e["name"]] += e["dur"] / 1e6 / PROFILED
  if not per_category:
    raise RuntimeError("the trace holds no per-op events: is --xla_cpu_enable_xprof_traceme "
                       "known to this jaxlib?")
  return dict(step_seconds=wall, categories=dict(per_category),
              top_ops=[[n, round(t, 4), categories[n]] for n, t in per_op.most_common(15)],
              xla_flags=os.environ["XLA_FLAGS"], jax=jax.__version__)


TORCH_CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::_mm", "aten::linear_backward")),
    ("attention", ("aten::bmm", "aten::baddbmm", "aten::addbmm",
                   "aten::_scaled_dot_product_flash_attention_for_cpu",
                   "aten::_scaled_dot_product_flash_attention_for_cpu_backward")),
    ("layout", ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy",
                "aten::cat", "aten::transpose", "aten::permute", "aten::t", "aten::view",
                "aten::reshape", "aten::expand", "aten::_unsafe_view", "aten::as_strided",
                "aten::unsqueeze", "aten::squeeze", "aten::slice", "aten::select")),
    ("reductions", ("aten::_softmax", "aten::_softmax_backward_data", "aten::mean",
                    "aten::sum", "aten::nll_loss", "aten::_log_softmax",
                    "aten::_log_softmax_backward_data", "aten::nll_loss_backward",
                    "aten::nll_loss_forward", "aten::norm", "aten::max", "aten::amax")),
    ("rng", ("aten::bernoulli_", "aten::native_dropout", "aten::uniform_")),
)


def torch_category(name: str) -> str:
  for category, names in TORCH_CATEGORIES:
    if name in names:
      return category
  return "elementwise" if name.startswith("aten::") else "other"


def profile_peft() -> dict:
  import torch
  step = train_step.peft_step(0.0)
  for i in range(WARMUP):
    step(i)
  start = time.perf_counter()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for i in range(PROFILED):
      step(WARMUP + i)
  wall = (time.perf_counter() - start) / PROFILED
  per_category, per_op = collections.Counter(), collections.Counter()
  for avg in prof.key_averages():
    seconds = avg.self_cpu_time_total / 1e6 / PROFILED
    per_category[torch_category(avg.key)] += seconds
    per_op[avg.key] += seconds
  return dict(step_seconds=wall, categories=dict(per_category),
              top_ops=[[n, round(t, 4), torch_category(n)] for n, t in per_op.most_common(15)],
              torch=torch.__version__, torch_threads=torch.get_num_threads())


SYSTEMS = ("ours", "ours_jaxlib", "peft")


def _spawn(system: str) -> dict:
  env = dict(os.environ)
  if system == "ours_jaxlib":  # jaxlib's own XLA defaults (YNNPACK dot fusions on).
    env["PROMPT_TUNING_XLA_DEFAULTS"] = "0"
  return train_step.spawn_child(__file__, system, env=env)


def summarize(runs: dict) -> dict:
  """Per system: medians over rounds of the step and of each category, and the GEMM rates."""
  parts = train_step.step_flops_parts()
  summary = {}
  for system, rs in runs.items():
    med = lambda values: float(np.median(values))  # noqa: E731
    cats = {c: med([r["categories"].get(c, 0.0) for r in rs]) for c in CATEGORIES}
    summary[system] = dict(step_seconds=med([r["step_seconds"] for r in rs]), categories=cats,
                           ops_total_seconds=sum(cats.values()),
                           gflops_in_step={
                               kind: parts[kind] / 1e9 / cats[c] if cats[c] else float("nan")
                               for kind, c in (("weights", "matmul"),
                                               ("attention", "attention"))},
                           top_ops=rs[-1]["top_ops"])
  return summary


# Where the binaries' defaults turn YNNPACK's dots off (CPUs without AVX-512),
# XLA runs dots through Eigen, whose trace events end when the work is handed to
# its thread pool: those rows of `ours` are not times.
ASYNC_ROWS = ("matmul", "attention")


def dots_through_eigen(xla_flags: str) -> bool:
  """Whether XLA_FLAGS turn YNNPACK's dot fusions off (an empty fusion type)."""
  return environment.xla_flag_values(xla_flags).get(environment.YNN_FUSION_FLAG) == ""


def markdown(out: dict) -> str:
  """step_profile*.md from its JSON (`main`); the summary is recomputed from the
  runs, so a table written by an older `summarize` is brought up to date."""
  info, summary, parts = out["cpu"], summarize(out["runs"]), train_step.step_flops_parts()
  ours, jaxlib, peft = (summary[s] for s in SYSTEMS)

  def ratio(a, b):
    return f"{a / b:.2f}x" if b else ""

  lines = ["# Where the train step's time goes: ours vs PEFT, per op", "",
           f"Machine: {machine.describe(info)}. Load average at start "
           f"{info['load_average'][0]:.1f}.", *([out["note"]] if out.get("note") else []), "",
           f"`train_step.py`'s dropout-0 step (T5 1.1 small, batch {train_step.BATCH}, "
           f"{train_step.INPUT_LEN} + {train_step.PROMPT_LEN} prompt tokens in, "
           f"{train_step.TARGET_LEN} out). Seconds per step, median over {out['rounds']} "
           f"alternating rounds (one process each) of the mean over {PROFILED} profiled steps "
           f"(profiling slows every side's step; `train_step*.md` in the same folder has the "
           f"unprofiled times). "
           f"Ours: jax.profiler with XLA's per-thunk events, categories from the compiled HLO, "
           f"with the binaries' XLA defaults (`{out['xla_flags']}`) and with jaxlib's own "
           f"(`PROMPT_TUNING_XLA_DEFAULTS=0`: YNNPACK dot fusions on); PEFT: torch.profiler "
           f"self times. Rerun: `{out['command']}`.", "",
           "| category | ours s | ours, jaxlib defaults s | PEFT s | ours / PEFT | "
           "jaxlib defaults / PEFT |", "| --- | --- | --- | --- | --- | --- |"]
  eigen = dots_through_eigen(out["xla_flags"])
  for c in CATEGORIES:
    a, j, b = ours["categories"][c], jaxlib["categories"][c], peft["categories"][c]
    if eigen and c in ASYNC_ROWS:
      lines.append(f"| {c} | ({a:.3f}, not a time: see below) | {j:.3f} | {b:.3f} | | "
                   f"{ratio(j, b)} |")
    else:
      lines.append(f"| {c} | {a:.3f} | {j:.3f} | {b:.3f} | {ratio(a, b)} | {ratio(j, b)} |")
  a, j, b = ours["step_seconds"], jaxlib["step_seconds"], peft["step_seconds"]
  lines.append(f"| step (wall, profiled) | {a:.3f} | {j:.3f} | {b:.3f} | {ratio(a, b)} | "
               f"{ratio(j, b)} |")
  for kind, title in (("weights", "weight matmuls"), ("attention", "attention")):
    lines += ["", f"Rate of the {title} inside the step (their analytic FLOPs, "
              f"{parts[kind] / 1e9:.0f} GFLOP, over the time in those ops): with jaxlib's "
              f"defaults {jaxlib['gflops_in_step'][kind]:.0f}, PEFT "
              f"{peft['gflops_in_step'][kind]:.0f} GFLOP/s."]
  if eigen:
    lines += ["", "With the binaries' defaults XLA runs dots through Eigen, which hands the "
              "work to its own thread pool: a dot's trace event ends when the work is handed "
              "over, not when it is done, so ours' matmul and attention figures are not times "
              "(and profiling that path slows its step most); the other rows, and the step, "
              "are real. With jaxlib's defaults the YNNPACK fusions run inside their events.",
              ""]
  else:
    same = ({r.get("xla_flags") for r in out["runs"]["ours"]}
            == {r.get("xla_flags") for r in out["runs"]["ours_jaxlib"]})
    lines += ["", "On this CPU the binaries keep YNNPACK's dots on: every row of ours is a "
              "time, the YNNPACK fusions running inside their events"
              + (", and the two columns of ours ran the same XLA flags (they differ only by "
                 "the run)." if same else ".") + " Both profilers slow their side's step.", ""]
  for system, title in zip(SYSTEMS, ("ours", "ours with jaxlib's defaults", "PEFT")):
    lines += [f"Heaviest ops, {title} (last round), seconds per step: " + ", ".join(
        f"`{n}` {t:.3f} ({c})" for n, t, c in summary[system]["top_ops"][:10]) + ".", ""]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--child")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--suffix", default="", help="ends the result's name")
  report.add_machine_flag(parser)
  parser.add_argument("--note", default="")
  args = parser.parse_args()
  if args.child:
    result = profile_peft() if args.child == "peft" else profile_ours()
    print("RESULT " + json.dumps(result))
    return
  info = train_step.start()
  runs = {system: [] for system in SYSTEMS}
  for _ in range(args.rounds):
    for system in runs:
      runs[system].append(_spawn(system))
      print(system, {k: round(v, 3) for k, v in runs[system][-1]["categories"].items()},
            f"step {runs[system][-1]['step_seconds']:.3f}s", flush=True)
  out = dict(cpu=info, summary=summarize(runs), runs=runs,
             analytic_step_gflop=train_step.step_flops() / 1e9,
             xla_flags=runs["ours"][0]["xla_flags"], rounds=args.rounds, note=args.note,
             command=train_step.rerun("step_profile.py", sys.argv[1:]))
  print(report.write(f"step_profile{args.suffix}", out, args.machine))


if __name__ == "__main__":
  main()
