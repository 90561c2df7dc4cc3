"""Prompt-tuning train step: this project vs Hugging Face PEFT, side by side.

T5 1.1-small config with random weights (the same weights in both systems,
read from one .npz file the same way: numpy arrays copied into each
framework's tensors, the host copy then dropped); batch 8, inputs 256 tokens
+ a 100-token encoder prompt, targets 8; Adafactor at learning rate 0.3.
Rows: dropout 0; dropout 0.1 with exact 32-bit masks on both sides (the main
dropout row); dropout 0.1 with our 8-bit masks (T5Config.dropout_mask_bits=8)
against the same PEFT run.

Each measurement runs in its own process and the systems alternate within a
round; medians over rounds. Memory, per process: the process peak
(ru_maxrss) and the peak during training, i.e. after the weights are loaded
(VmHWM reset through /proc/self/clear_refs; it includes compiling the step);
also the peak over the timed steps alone.

Model FLOPs utilization (MFU): an analytic count of the FLOPs the prompt
step needs (matmuls only: the forward pass, and the backward pass through
activations, never into the frozen weights; `step_flops`), the same count for
both systems, over the step time; then over the best dense float32 matmul
rate measured in the same run with XLA, torch and numpy (each listed).

Run: python benchmarks/train_step.py [--rounds 3] [--suffix _remat_full]
(needs the [interop] extra). Writes results/<machine>/train_step{suffix}.json
and .md (`machine.py` names the folder; `--machine` overrides it). On a GPU
host our side runs on the GPU and PEFT on CUDA as well.
"""

import argparse
import gc
import json
import os
import resource
import shlex
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run as a script, and as its own child processes
  sys.path.insert(0, ROOT)

from benchmarks import machine, report  # noqa: E402

BATCH, INPUT_LEN, PROMPT_LEN, TARGET_LEN = 8, 256, 100, 8
WARMUP, TIMED = 3, 10
# T5 1.1 small.
H, N, D, F, V, LAYERS = 512, 6, 64, 1024, 32128, 8


def step_flops_parts(batch=BATCH, input_len=INPUT_LEN, prompt_len=PROMPT_LEN,
                     target_len=TARGET_LEN, dims=(H, N, D, F, V, LAYERS)) -> dict:
  """FLOPs the prompt step needs, by kind: weight matmuls (`weights`, logits
  included) and attention's score and value matmuls (`attention`).

  Counted: every weight matmul once forward and once backward (the input
  gradient only; no weight gradient, the backbone is frozen); attention
  score and value matmuls once forward and twice backward (both operands are
  activations). Not counted: elementwise work, softmax, norms, the optimizer
  (all small next to the matmuls) and the backward of the first decoder
  self-attention (which does not depend on the prompt; under 0.1%).
  `dims`: (width, heads, head width, MLP width, vocabulary, layers), by
  default T5 1.1 small's.
  """
  H, N, D, F, V, LAYERS = dims  # noqa: N806  (the module's names, at another size)
  m, t, b = input_len + prompt_len, target_len, batch
  nd = N * D
  enc_w = LAYERS * 2 * b * m * (4 * H * nd + 3 * H * F)   # q k v o, wi_0 wi_1 wo
  enc_a = LAYERS * 2 * b * N * (2 * m * m * D)            # QK^T, AV
  dec_w = LAYERS * 2 * b * (t * (4 * H * nd + 2 * H * nd + 3 * H * F)  # self qkvo, cross q o, mlp
                            + m * 2 * H * nd)                          # cross k v over the encoder
  dec_a = LAYERS * 2 * b * N * (2 * t * t * D + 2 * t * m * D)
  logits = 2 * b * t * H * V
  return dict(weights=float(2 * (enc_w + dec_w + logits)),  # forward + input gradient
              attention=float(3 * (enc_a + dec_a)))          # forward + both operands' gradients


def step_flops(**kwargs) -> float:
  """All the matmul FLOPs the prompt step needs (`step_flops_parts`), forward + backward."""
  return sum(step_flops_parts(**kwargs).values())


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, 32000, size=(BATCH, INPUT_LEN)).astype(np.int32)
  enc[:, -1] = 1
  tgt = rng.randint(2, 32000, size=(BATCH, TARGET_LEN)).astype(np.int32)
  tgt[:, -1] = 1
  dec_in = np.concatenate([np.zeros((BATCH, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def _weights_path():
  return os.path.join(HERE, ".cache_t5_small_random.npz")


def _our_params():
  """T5 1.1 small, random (seeded), saved once so both systems load the same weights."""
  path = _weights_path()
  if not os.path.exists(path):
    import jax
    from prompt_tuning.models import params as params_lib
    from prompt_tuning.models import presets
    from prompt_tuning.models.t5 import T5
    from prompt_tuning import trees as tree_lib
    params = params_lib.init_params(T5(presets.preset("t5_1_1", "small")), jax.random.PRNGKey(0))
    np.savez(path, **{k: np.asarray(v) for k, v in tree_lib.flatten(params).items()})
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _rss_mib(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux); False where not allowed."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


class Memory:
  """Peak RSS after loading and over the timed steps (VmHWM resets)."""

  def loaded(self):
    gc.collect()
    self.after_load_mib = _rss_mib("VmRSS")
    self.reset_ok = _reset_peak_rss()

  def warm(self):
    self.training_peak_mib = _rss_mib("VmHWM")
    _reset_peak_rss()

  def done(self) -> dict:
    return dict(after_load_rss_mib=self.after_load_mib,
                training_peak_rss_mib=max(self.training_peak_mib, _rss_mib("VmHWM"))
                if self.reset_ok else float("nan"),
                timed_steps_peak_rss_mib=_rss_mib("VmHWM") if self.reset_ok else float("nan"),
                process_peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def exact_float32_matmuls():
  """On a GPU, JAX's default float32 matmuls use TF32 and torch's do not: ask
  JAX for full float32 so that both sides do the same arithmetic."""
  import jax
  if jax.default_backend() == "gpu":
    jax.config.update("jax_default_matmul_precision", "highest")


def _gpu_peak_mib_jax():
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", float("nan") * 2**20) / 2**20


def ours_step(dropout: float, mask_bits: int, remat: str = "",
              rng_impl: str = "threefry2x32", dtype: str = "float32"):
  """Loads the weights into our model and returns (step, jitted, args): `step(i)`
  runs train step i to completion and returns its loss; `jitted` and `args(i)`
  are the compiled function and its arguments (for cost analysis).

  `remat`: a T5Config.remat_policy ('minimal': everything recomputed in the
  backward pass except the weight matmuls' outputs; 'full': everything) with
  scanned layers; empty: unrolled layers, nothing recomputed.
  `rng_impl`: JAX's PRNG for the dropout key (`DropoutSpec.rng_impl`):
  threefry2x32 (JAX's default) or rbg (T5X's fast choice); both draw exact
  32-bit words per element with `mask_bits=32`.
  `dtype`: the activations (`T5Config.dtype`); the weights, the prompt and the
  optimizer state stay float32."""
  from prompt_tuning.cli import environment
  # The binaries' XLA defaults.
  environment.configure(compilation_cache=False, tensorflow=False)
  import jax
  import jax.numpy as jnp
  exact_float32_matmuls()
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models import presets
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning import trees as tree_lib
  from prompt_tuning.train import optimizers
  from prompt_tuning.train import step as step_lib
  flat = _our_params()
  cfg = presets.preset("t5_1_1", "small", dropout_rate=dropout, dropout_mask_bits=mask_bits,
                       scan_layers=bool(remat), remat_policy=remat or "none", dtype=dtype)
  if remat:
    flat = params_lib.stack_layers(flat, {"encoder": cfg.num_encoder_layers,
                                          "decoder": cfg.num_decoder_layers})
  model = T5(cfg, encoder_prompt=soft.SoftPrompt(length=PROMPT_LEN,
                                                 init=initializers.random_uniform(0.5)))
  frozen = tree_lib.unflatten({k: jnp.asarray(v) for k, v in flat.items()})
  del flat  # Both sides drop the host copy once the framework holds the weights.
  jax.block_until_ready(frozen)
  prompt = initializers.random_uniform(0.5)(jax.random.PRNGKey(1), (PROMPT_LEN, H))
  state = {"trainable": {"encoder_prompt": {"prompt": prompt}}}
  opt = optimizers.prompt_tuning_adafactor()
  state["opt"] = opt.init(state["trainable"])
  base = step_lib.make_train_step(model, opt, 1e-4, dropout > 0)
  key = jax.random.key(0, impl=rng_impl)
  jitted = jax.jit(lambda t, o, f, b, i: base(t, o, f, b, jax.random.fold_in(key, i)),
                   donate_argnums=(0, 1))
  enc, dec_in, tgt = _batch()
  batch = jax.device_put(dict(encoder_input_tokens=enc, decoder_input_tokens=dec_in,
                              decoder_target_tokens=tgt,
                              decoder_loss_weights=(tgt > 0).astype(np.float32)))

  def args(i):
    return state["trainable"], state["opt"], frozen, batch, np.int32(i)

  def step(i):
    state["trainable"], state["opt"], metrics = jitted(*args(i))
    return float(jax.block_until_ready(metrics["loss"]))

  return step, jitted, args


def _timed_steps(step, mem) -> tuple[list, float]:
  """WARMUP then TIMED steps; the step seconds of the timed ones and the last loss."""
  times = []
  for i in range(WARMUP + TIMED):
    if i == WARMUP:
      mem.warm()
    start = time.perf_counter()
    loss = step(i)
    if i >= WARMUP:
      times.append(time.perf_counter() - start)
  return times, loss


def run_ours(dropout: float, mask_bits: int, remat: str = "",
             rng_impl: str = "threefry2x32") -> dict:
  import jax
  mem = Memory()
  step, jitted, args = ours_step(dropout, mask_bits, remat, rng_impl)
  mem.loaded()
  times, loss = _timed_steps(step, mem)
  out = dict(step_seconds=times, loss=loss, **mem.done(),
             device=str(jax.devices()[0].device_kind), jax=jax.__version__,
             gpu_peak_mib=_gpu_peak_mib_jax() if jax.default_backend() == "gpu" else None,
             xla_flags=os.environ.get("XLA_FLAGS", ""))
  if not remat and dropout == 0:  # XLA's own count, for reference.
    cost = jitted.lower(*args(0)).compile().cost_analysis()
    out["xla_cost_analysis_flops"] = float((cost[0] if isinstance(cost, (list, tuple))
                                            else cost)["flops"])
  return out


def peft_step(dropout: float, autocast_bf16: bool = False):
  """Loads the same weights into HF T5 + PEFT prompt tuning; returns `step(i)`,
  which runs one training step (forward, backward, Adafactor) and returns its loss.
  `autocast_bf16`: the forward pass under `torch.autocast(dtype=bfloat16)` (float32
  weights, prompt and optimizer state; bfloat16 compute)."""
  import torch
  import transformers
  from peft import PromptTuningConfig, TaskType, get_peft_model
  from prompt_tuning.readers import hf as hf_lib
  from prompt_tuning.models import presets
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  cfg = presets.preset("t5_1_1", "small")
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      dropout_rate=dropout, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(hf_cfg)
  model.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.emb_dim))
  flat = _our_params()
  for hf_name, (name, transpose) in hf_lib._name_map(cfg).items():
    value = flat.pop(name)
    value = value.T if transpose else value
    param = model.get_parameter(hf_name)
    with torch.no_grad():
      param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    del value
  del flat  # As on our side: the framework holds the weights, the host copy goes.
  peft_cfg = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=PROMPT_LEN,
                                num_transformer_submodules=1)
  model = get_peft_model(model, peft_cfg).to(dev)
  model.train()
  opt = transformers.Adafactor([p for p in model.parameters() if p.requires_grad], lr=0.3,
                               relative_step=False, scale_parameter=False, warmup_init=False,
                               weight_decay=1e-5)
  enc, _, tgt = _batch()
  enc_t = torch.from_numpy(enc.astype(np.int64)).to(dev)
  tgt_t = torch.from_numpy(tgt.astype(np.int64)).to(dev)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

  def step(i):
    del i
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast_bf16):
      loss = model(input_ids=enc_t, attention_mask=enc_t > 0, labels=tgt_t).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    sync()
    return float(loss)

  return step


def run_peft(dropout: float) -> dict:
  import torch
  import transformers
  mem = Memory()
  step = peft_step(dropout)
  mem.loaded()
  times, loss = _timed_steps(step, mem)
  return dict(step_seconds=times, loss=loss, **mem.done(),
              device="cuda" if torch.cuda.is_available() else "cpu",
              gpu_peak_mib=torch.cuda.max_memory_allocated() / 2**20
              if torch.cuda.is_available() else None,
              torch=torch.__version__, peft=__import__("peft").__version__,
              transformers=transformers.__version__, torch_threads=torch.get_num_threads())


MATMUL_N = 2048


def run_matmul(lib: str) -> dict:
  """Best float32 MATMUL_N^3 matmul GFLOP/s with one library, in its own process."""
  n, reps = MATMUL_N, 8
  a = np.random.RandomState(0).rand(n, n).astype(np.float32)
  if lib == "numpy":
    fn = lambda: a @ a  # noqa: E731
  elif lib == "xla":
    from prompt_tuning.cli import environment
    environment.configure(compilation_cache=False, tensorflow=False)
    import jax
    exact_float32_matmuls()
    x = jax.device_put(a)
    mm = jax.jit(lambda x: x @ x)
    fn = lambda: mm(x).block_until_ready()  # noqa: E731
  else:
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.from_numpy(a).to(dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    fn = lambda: (x @ x, sync())  # noqa: E731
  return dict(gflops=best_matmul_gflops(fn, n, reps))


def best_matmul_gflops(fn, n: int, reps: int = 8) -> float:
  """The best GFLOP/s of `reps` calls of `fn` (an n x n x n matmul), after one warm-up."""
  fn()
  best = 0.0
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
  return best


# (name, system, dropout, mask bits): the rows of the comparison.
CONFIGS = (("ours", "ours", 0.0, 8), ("ours_remat", "ours_remat", 0.0, 8),
           ("ours_remat_full", "ours_remat_full", 0.0, 8),
           ("peft", "peft", 0.0, 0),
           ("ours", "ours", 0.1, 32), ("ours_remat", "ours_remat", 0.1, 32),
           ("ours_remat_full", "ours_remat_full", 0.1, 32),
           ("ours_rbg", "ours_rbg", 0.1, 32),
           ("ours_8bit", "ours", 0.1, 8), ("peft", "peft", 0.1, 0))
ROWS = (("dropout 0", 0.0, ("ours", "ours_remat", "ours_remat_full")),
        ("dropout 0.1, exact 32-bit masks", 0.1, ("ours", "ours_remat", "ours_remat_full",
                                                  "ours_rbg")),
        ("dropout 0.1, our 8-bit masks", 0.1, ("ours_8bit",)))


def child(args) -> None:
  system, dropout, bits = args
  if system == "peft":
    result = run_peft(float(dropout))
  elif system.startswith("matmul_"):
    result = run_matmul(system[len("matmul_"):])
  else:
    remat = {"ours_remat": "minimal", "ours_remat_full": "full"}.get(system, "")
    result = run_ours(float(dropout), int(bits), remat=remat,
                      rng_impl="rbg" if system == "ours_rbg" else "threefry2x32")
  print("RESULT " + json.dumps(result))


def time_calls(fn, repeats: int) -> list:
  """Seconds of `repeats` calls of `fn`, after two untimed ones (compile, warm-up)."""
  fn()
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def spawn_child(script: str, *args, env: dict | None = None) -> dict:
  """Runs `script --child ARGS` in a fresh process; the JSON it printed after RESULT."""
  out = subprocess.run([sys.executable, script, "--child", *map(str, args)],
                       capture_output=True, text=True, check=False, env=env)
  if out.returncode:
    raise RuntimeError(f"child {args} of {os.path.basename(script)} failed:\n"
                       f"{out.stderr[-3000:]}")
  return json.loads(out.stdout.split("RESULT ", 1)[1])


def _spawn(*args) -> dict:
  return spawn_child(__file__, *args)


def start() -> dict:
  """Before the first child: the shared weights written once (no child races to
  write them), the machine described and shown."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _our_params()
  info = machine.cpu_info()
  print("CPU:", machine.describe(info), "| load average", info["load_average"], flush=True)
  return info


def alternate_rounds(systems, spawn, rounds: int, show) -> tuple[dict, list, dict]:
  """Runs `spawn(system)` for every system in turn, `rounds` times (each a
  fresh process), printing `show(result)` as it goes. Returns the results per
  system, the load average after each round, and the CPU description."""
  info = start()
  runs, loads = {system: [] for system in systems}, []
  for _ in range(rounds):
    for system in systems:
      result = spawn(system)
      runs[system].append(result)
      print(system, show(result), flush=True)
    loads.append(os.getloadavg())
  return runs, loads, info


def save(name: str, args, summary: dict, runs: dict) -> None:
  """Files an alternating-rounds result as results/<machine>/{name}{suffix}.json with
  what its table prints beside the figures (rounds, note, command line); shows the table."""
  print(report.write(f"{name}{args.suffix}",
                     dict(summary=summary, runs=runs, rounds=args.rounds, note=args.note,
                          argv=sys.argv[1:]), args.machine))


def rerun(script: str, argv) -> str:
  """The command line that made a result (its arguments as saved in the JSON)."""
  return shlex.join(["python", f"benchmarks/{script}", *argv])


def compare_xla_defaults(rounds: int, suffix: str, machine_name: str | None) -> None:
  """Our dropout-0 step with the binaries' CPU XLA defaults against jaxlib's own
  (PROMPT_TUNING_XLA_DEFAULTS=0), alternating processes; writes
  results/<machine>/train_step_xla_defaults{suffix}.md / .json."""
  info = machine.cpu_info()
  times = {"project defaults": [], "jaxlib defaults": []}
  for _ in range(rounds):
    for name, switch in (("project defaults", "1"), ("jaxlib defaults", "0")):
      os.environ["PROMPT_TUNING_XLA_DEFAULTS"] = switch
      result = _spawn("ours", 0.0, 8)
      times[name].append(float(np.median(result["step_seconds"])))
      print(name, f"{times[name][-1]:.3f}s", result["xla_flags"] or "(no XLA_FLAGS)", flush=True)
  os.environ.pop("PROMPT_TUNING_XLA_DEFAULTS")
  med = {k: float(np.median(v)) for k, v in times.items()}
  out = dict(machine=info, step_seconds=times, median=med,
             project_over_jaxlib_speed=med["jaxlib defaults"] / med["project defaults"],
             rounds=rounds, argv=sys.argv[1:])
  print(report.write(f"train_step_xla_defaults{suffix}", out, machine_name))


def xla_defaults_markdown(out: dict) -> str:
  """train_step_xla_defaults*.md from its JSON (`compare_xla_defaults`)."""
  med = out["median"]
  lines = ["# Train step: the binaries' CPU XLA defaults against jaxlib's", "",
           f"Machine: {machine.describe(out['machine'])}. Our dropout-0 step of `train_step.py` "
           f"(same weights, batch, prompt), one process per measurement, alternating, "
           f"{out['rounds']} rounds; each figure the median over rounds of a process's median "
           f"of {TIMED} steps. Project defaults: `prompt_tuning/cli/environment.py` "
           "CPU_XLA_FLAGS (YNNPACK dot fusions off); jaxlib defaults: "
           f"`PROMPT_TUNING_XLA_DEFAULTS=0`. Rerun: `{rerun('train_step.py', out['argv'])}`.", "",
           "| XLA settings | step s (median) | per round |", "| --- | --- | --- |"]
  lines += [f"| {k} | {med[k]:.3f} | {', '.join(f'{x:.2f}' for x in v)} |"
            for k, v in out["step_seconds"].items()]
  lines += ["", f"Project defaults run at {out['project_over_jaxlib_speed']:.2f}x the speed of "
            "jaxlib's.", ""]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--compare_xla_defaults", action="store_true",
                      help="only our dropout-0 step, with the project's CPU XLA defaults and "
                      "without; writes train_step_xla_defaults{suffix}.*")
  parser.add_argument("--child", nargs=3)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--suffix", default="",
                      help="ends the result's name: train_step{suffix}.json (e.g. _remat_full)")
  report.add_machine_flag(parser)
  parser.add_argument("--note", default="", help="a line for the markdown (e.g. the machine)")
  parser.add_argument("--no_remat", action="store_true",
                      help="leave out ours_remat and ours_remat_full (faster)")
  parser.add_argument("--systems", default="",
                      help="comma-separated: only these of ours, ours_remat, ours_remat_full, "
                      "ours_rbg, ours_8bit (PEFT always runs)")
  args = parser.parse_args()
  global CONFIGS, ROWS
  keep = set(args.systems.split(",")) if args.systems else {c[0] for c in CONFIGS}
  unknown = keep - {c[0] for c in CONFIGS}
  if unknown:
    parser.error(f"unknown --systems {sorted(unknown)}; expected some of "
                 f"{sorted({c[0] for c in CONFIGS} - {'peft'})}")
  if args.no_remat:
    keep -= {"ours_remat", "ours_remat_full"}
  keep.add("peft")
  CONFIGS = tuple(c for c in CONFIGS if c[0] in keep)
  ROWS = tuple((t, d, tuple(n for n in names if n in keep)) for t, d, names in ROWS)
  ROWS = tuple(row for row in ROWS if row[2])
  if args.child:
    child(args.child)
    return
  if args.compare_xla_defaults:
    compare_xla_defaults(args.rounds, args.suffix, args.machine)
    return
  info = start()
  runs, matmul, loads = {}, {}, [info["load_average"]]
  libs = ("xla", "torch", "numpy")
  for lib in libs:
    matmul.setdefault(lib, []).append(_spawn(f"matmul_{lib}", 0, 0)["gflops"])
  for _ in range(args.rounds):
    for name, system, dropout, bits in CONFIGS:  # Alternate within each round.
      result = _spawn(system, dropout, bits)
      runs.setdefault(f"{name}@{dropout}", []).append(result)
      print(name, dropout, f"{np.median(result['step_seconds']):.3f}s",
            f"train peak {result['training_peak_rss_mib']:.0f} MiB", os.getloadavg()[0],
            flush=True)
    loads.append(os.getloadavg())
  for lib in libs:
    matmul[lib].append(_spawn(f"matmul_{lib}", 0, 0)["gflops"])
  best_matmul = {lib: max(v) for lib, v in matmul.items()}
  peak = max(best_matmul.values())
  flops = step_flops()

  def stats(key):
    rs = runs[key]
    step = float(np.median([np.median(r["step_seconds"]) for r in rs]))
    med = lambda f: float(np.median([r[f] for r in rs]))  # noqa: E731
    return dict(step_seconds=step, input_tokens_per_sec=BATCH * INPUT_LEN / step,
                training_peak_rss_mib=med("training_peak_rss_mib"),
                timed_steps_peak_rss_mib=med("timed_steps_peak_rss_mib"),
                process_peak_rss_mib=med("process_peak_rss_mib"),
                model_flops_per_sec=flops / step, mfu=flops / step / 1e9 / peak,
                gpu_peak_mib=rs[0].get("gpu_peak_mib"),
                per_round_step_seconds=[float(np.median(r["step_seconds"])) for r in rs])

  summary = dict(cpu=info, load_average_per_round=loads, matmul_gflops=best_matmul,
                 matmul_gflops_all=matmul, best_matmul_gflops=peak,
                 analytic_step_gflop=flops / 1e9, rows={})
  ours_key = next(k for k in runs if k.startswith("ours"))  # "ours@0.0" when it ran
  xla_flops = runs[ours_key][0].get("xla_cost_analysis_flops")
  if xla_flops:
    summary["xla_cost_analysis_gflop"] = xla_flops / 1e9
  for title, dropout, ours_names in ROWS:
    peft = stats(f"peft@{dropout}")
    row = {"peft": peft}
    for name in ours_names:
      s = stats(f"{name}@{dropout}")
      s["tokens_per_sec_ratio"] = s["input_tokens_per_sec"] / peft["input_tokens_per_sec"]
      s["training_peak_rss_ratio"] = s["training_peak_rss_mib"] / peft["training_peak_rss_mib"]
      s["process_peak_rss_ratio"] = s["process_peak_rss_mib"] / peft["process_peak_rss_mib"]
      row[name] = s
    summary["rows"][title] = row
  first = lambda k: runs[k][0]  # noqa: E731
  summary["versions"] = dict(jax=first(ours_key)["jax"], torch=first("peft@0.0")["torch"],
                             peft=first("peft@0.0")["peft"],
                             transformers=first("peft@0.0")["transformers"],
                             xla_flags=first(ours_key)["xla_flags"],
                             device=first(ours_key)["device"],
                             torch_device=first("peft@0.0")["device"],
                             torch_threads=first("peft@0.0")["torch_threads"])
  save("train_step", args, summary, runs)


def markdown(result: dict) -> str | None:
  """train_step*.md from its JSON (`main`); None for a file not written by `main`
  (the partial H100 run's, written by hand from its log)."""
  if "summary" not in result:
    return None
  summary, rounds = result["summary"], result["rounds"]
  info, loads, v = summary["cpu"], summary["load_average_per_round"], summary["versions"]
  # The rows that ran, in their order: title -> our layouts (PEFT's row is "peft").
  rows = {title: [n for n in row if n != "peft"] for title, row in summary["rows"].items()}
  on_gpu = v["torch_device"] == "cuda"
  lines = [f"# Train step: prompt tuning here vs HF PEFT ({'GPU' if on_gpu else 'CPU'})", "",
           f"Machine: {machine.describe(info)}"
           + (f"; JAX device {v['device']}, torch on CUDA" if on_gpu else "")
           + f". Load average at start {info['load_average'][0]:.1f}, per round "
           + ", ".join(f"{la[0]:.1f}" for la in loads[1:]) + ".",
           *([result["note"]] if result["note"] else []), "",
           f"T5 1.1-small config, the same random weights loaded the same way; batch {BATCH}, "
           f"inputs {INPUT_LEN} + {PROMPT_LEN}-token prompt, targets {TARGET_LEN}; Adafactor 0.3. "
           f"Each number: median over {rounds} alternating rounds (one process each) of "
           f"the median of {TIMED} timed steps after {WARMUP} warm-up. XLA flags: "
           f"`{v['xla_flags'] or '(none)'}`. Versions: jax {v['jax']}, torch {v['torch']} "
           f"({v['torch_threads']} threads), transformers {v['transformers']}, peft "
           f"{v['peft']}. Rerun: `{rerun('train_step.py', result['argv'])}`.",
           "", "`ours`: unrolled layers, nothing recomputed. `ours_remat`: scanned layers, "
           "rematerialized except the weight matmuls' outputs (`scan_layers=True, "
           "remat_policy='minimal'`). `ours_remat_full`: scanned layers, everything "
           "rematerialized (`remat_policy='full'`): the least memory, the most "
           "recomputation. `ours_rbg`: `ours` with the dropout key drawn by JAX's "
           "rbg PRNG (`DropoutSpec.rng_impl='rbg'`, T5X's fast choice) instead of threefry; "
           "its masks are exact 32-bit draws too. Training peak RSS: the highest resident "
           "memory after the "
           "weights were loaded (compiling and running the steps); process peak: the whole "
           "process's. MFU: analytic model FLOPs / step time / best matmul rate below.", "",
           "| dropout | system | input tokens/s | ratio to PEFT | training peak RSS MiB | "
           "RSS ratio | process peak MiB | MFU |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for title, ours_names in rows.items():
    row = summary["rows"][title]
    for name in (*ours_names, "peft"):
      r = row[name]
      ratio = (f"**{r['tokens_per_sec_ratio']:.2f}x** | {r['training_peak_rss_mib']:.0f} | "
               f"{r['training_peak_rss_ratio']:.2f}x" if name != "peft"
               else f" | {r['training_peak_rss_mib']:.0f} | ")
      lines.append(f"| {title} | {name} | {r['input_tokens_per_sec']:.0f} | {ratio} | "
                   f"{r['process_peak_rss_mib']:.0f} | {100 * r['mfu']:.0f}% |")
  if on_gpu:
    lines += ["", "GPU memory, peak allocated by the framework during training (ours: XLA's "
              "peak_bytes_in_use; PEFT: torch.cuda.max_memory_allocated); JAX runs float32 "
              "matmuls at full precision (`jax_default_matmul_precision='highest'`), as torch "
              "does by default:", ""]
    for title, ours_names in rows.items():
      row = summary["rows"][title]
      lines.append(f"- {title}: " + ", ".join(f"{n} {row[n]['gpu_peak_mib']:.0f} MiB"
                                               for n in (*ours_names, "peft")))
  xla_gflop = summary.get("xla_cost_analysis_gflop")
  lines += ["", f"Analytic FLOPs per step: {summary['analytic_step_gflop']:.0f} GFLOP (forward "
            "+ backward through activations, matmuls only; `step_flops`)"
            + (f"; XLA's cost analysis of our compiled step counts {xla_gflop:.0f}." if
               xla_gflop else "."),
            "Best dense float32 2048^3 matmul in this run (each in its own process, before and "
            "after the rounds): " + ", ".join(f"{lib} {g:.0f} GFLOP/s" for lib, g in
                                              summary["matmul_gflops"].items()) + "."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
