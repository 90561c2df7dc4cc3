"""Prompt-tuning train step: this project vs Hugging Face PEFT, side by side.

T5 1.1-small config with random weights (the same weights in both systems);
batch 8, inputs 256 tokens + a 100-token encoder prompt, targets 8; Adafactor
at learning rate 0.3; dropout 0 and 0.1. Each measurement runs in its own
process (so peak RSS is that system's alone), and the two systems alternate
within one run; medians are reported. Also: the FLOPs of the prompt step
against full fine-tuning from XLA's cost analysis, and achieved FLOP/s against
the best float32 matmul measured in the same run.

Run: python benchmarks/train_step.py [--rounds 3]   (needs the [interop] extra)
Writes train_step.json and train_step.md next to this file.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

BATCH, INPUT_LEN, PROMPT_LEN, TARGET_LEN = 8, 256, 100, 8
WARMUP, TIMED = 3, 10


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
  import jax
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models import presets
  from prompt_tuning.models.t5 import T5
  from prompt_tuning import trees as tree_lib
  path = _weights_path()
  if not os.path.exists(path):
    params = params_lib.init_params(T5(presets.preset("t5_1_1", "small")), jax.random.PRNGKey(0))
    np.savez(path, **{k: np.asarray(v) for k, v in tree_lib.flatten(params).items()})
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def run_ours(dropout: float, remat: bool = False) -> dict:
  """`remat`: scanned layers, rematerialized except the weight matmuls' outputs
  (T5Config.scan_layers=True, remat_policy='minimal'); otherwise unrolled, nothing
  recomputed. Both draw 8-bit dropout masks (T5Config.dropout_mask_bits, the default)."""
  import jax
  import jax.numpy as jnp
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models import presets
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning import trees as tree_lib
  from prompt_tuning.train import freezing, loop, optimizers
  from prompt_tuning.runtime import partitioning
  from prompt_tuning.models.t5 import T5
  flat = _our_params()
  cfg = presets.preset("t5_1_1", "small", dropout_rate=dropout, scan_layers=remat,
                       remat_policy="minimal" if remat else "none")
  if remat:
    flat = params_lib.stack_layers(flat, {"encoder": cfg.num_encoder_layers,
                                          "decoder": cfg.num_decoder_layers})
  model = T5(cfg, encoder_prompt=soft.SoftPrompt(length=PROMPT_LEN,
                                                 init=initializers.random_uniform(0.5)))
  prompt = initializers.random_uniform(0.5)(jax.random.PRNGKey(1), (PROMPT_LEN, 512))
  frozen = tree_lib.unflatten({k: jnp.asarray(v) for k, v in flat.items()})
  del flat  # The host copy: a real run reads the checkpoint straight to the devices.
  trainable = {"encoder_prompt": {"prompt": prompt}}
  opt = optimizers.prompt_tuning_adafactor()
  opt_state = opt.init(trainable)
  mesh = partitioning.make_mesh(partitioning.PartitioningConfig(num_devices=1))
  rep = partitioning.replicated(mesh)
  step = loop.jit_train_step(model, opt, 1e-4, dropout > 0, 0, mesh,
                             jax.tree.map(lambda _: rep, trainable),
                             jax.tree.map(lambda _: rep, opt_state),
                             jax.tree.map(lambda _: rep, frozen))
  enc, dec_in, tgt = _batch()
  batch = dict(encoder_input_tokens=enc, decoder_input_tokens=dec_in,
               decoder_target_tokens=tgt, decoder_loss_weights=(tgt > 0).astype(np.float32))
  times = []
  for i in range(WARMUP + TIMED):
    start = time.perf_counter()
    trainable, opt_state, metrics = step(trainable, opt_state, frozen, batch, np.int32(i))
    jax.block_until_ready(metrics["loss"])
    if i >= WARMUP:
      times.append(time.perf_counter() - start)
  # Peak memory of training alone, before compiling anything else.
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if remat:  # FLOPs are the unrolled run's (rematerialization adds recomputation).
    return dict(step_seconds=times, peak_rss_mib=peak_rss)
  flops = step.lower(trainable, opt_state, frozen, batch, np.int32(0)).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, (list, tuple)) else flops)["flops"]
  # Full fine-tuning of the same model and batch, for the FLOPs ratio.
  all_params = freezing.merge(trainable, frozen)
  full_opt = optimizers.prompt_tuning_adafactor()
  full_state = jax.eval_shape(full_opt.init, all_params)
  full_step = loop.jit_train_step(model, full_opt, 1e-4, dropout > 0, 0, mesh,
                                  jax.tree.map(lambda _: rep, all_params),
                                  jax.tree.map(lambda _: rep, full_state), {})
  full_flops = full_step.lower(all_params, full_state, {}, batch, np.int32(0)).compile()
  full_flops = full_flops.cost_analysis()
  full_flops = (full_flops[0] if isinstance(full_flops, (list, tuple)) else full_flops)["flops"]
  # And its speed: the same batch, every parameter trained (the prompt included).
  full_state = full_opt.init(all_params)
  full_times = []
  for i in range(WARMUP + TIMED):
    start = time.perf_counter()
    all_params, full_state, metrics = full_step(all_params, full_state, {}, batch, np.int32(i))
    jax.block_until_ready(metrics["loss"])
    if i >= WARMUP:
      full_times.append(time.perf_counter() - start)
  return dict(step_seconds=times, flops=float(flops), full_finetune_flops=float(full_flops),
              full_finetune_step_seconds=full_times, peak_rss_mib=peak_rss)


def run_peft(dropout: float) -> dict:
  import torch
  import transformers
  from peft import PromptTuningConfig, TaskType, get_peft_model
  from prompt_tuning.readers import hf as hf_lib
  from prompt_tuning.models import presets
  torch.manual_seed(0)
  cfg = presets.preset("t5_1_1", "small")
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      dropout_rate=dropout, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(hf_cfg)
  model.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.emb_dim))
  ours = _our_params()
  state = {}
  for hf_name, (name, transpose) in hf_lib._name_map(cfg).items():
    value = ours[name].T if transpose else ours[name]
    state[hf_name] = torch.from_numpy(np.ascontiguousarray(value))
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and all("embed_tokens" in m for m in missing), (missing, unexpected)
  peft_cfg = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=PROMPT_LEN,
                                num_transformer_submodules=1)
  model = get_peft_model(model, peft_cfg)
  model.train()
  opt = transformers.Adafactor([p for p in model.parameters() if p.requires_grad], lr=0.3,
                               relative_step=False, scale_parameter=False, warmup_init=False,
                               weight_decay=1e-5)
  enc, _, tgt = _batch()
  enc_t, tgt_t = torch.from_numpy(enc.astype(np.int64)), torch.from_numpy(tgt.astype(np.int64))
  times = []
  for i in range(WARMUP + TIMED):
    start = time.perf_counter()
    loss = model(input_ids=enc_t, attention_mask=enc_t > 0, labels=tgt_t).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    if i >= WARMUP:
      times.append(time.perf_counter() - start)
  return dict(step_seconds=times, torch=torch.__version__, peft=__import__("peft").__version__,
              transformers=transformers.__version__)


def matmul_peak() -> float:
  """Best float32 2048^3 matmul GFLOP/s with numpy in this process."""
  a = np.random.RandomState(0).rand(2048, 2048).astype(np.float32)
  best = 0.0
  for _ in range(5):
    start = time.perf_counter()
    a @ a
    best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9)
  return best


SYSTEMS = ("ours", "ours_remat", "peft")


def child(system: str, dropout: float) -> None:
  if system == "peft":
    result = run_peft(dropout)
  else:
    result = run_ours(dropout, remat=system == "ours_remat")
  result.setdefault("peak_rss_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  print("RESULT " + json.dumps(result))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "DROPOUT"))
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  if args.child:
    child(args.child[0], float(args.child[1]))
    return
  _our_params()  # Create the shared weights once.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  runs = {}
  peak = matmul_peak()
  for dropout in (0.0, 0.1):
    for _ in range(args.rounds):
      for system in SYSTEMS:  # Alternate within the run.
        out = subprocess.run([sys.executable, __file__, "--child", system, str(dropout)],
                             capture_output=True, text=True, env=env, check=True).stdout
        result = json.loads(out.split("RESULT ", 1)[1])
        runs.setdefault(f"{system}@{dropout}", []).append(result)
        print(system, dropout, np.median(result["step_seconds"]), result["peak_rss_mib"],
              flush=True)
  summary = {}
  for dropout in (0.0, 0.1):
    row = {}
    for system in SYSTEMS:
      rs = runs[f"{system}@{dropout}"]
      step = float(np.median([t for r in rs for t in r["step_seconds"]]))
      row[system] = dict(step_seconds=step, input_tokens_per_sec=BATCH * INPUT_LEN / step,
                         peak_rss_mib=float(np.median([r["peak_rss_mib"] for r in rs])))
    ours = runs[f"ours@{dropout}"][0]
    row["tokens_per_sec_ratio_ours_over_peft"] = (row["ours"]["input_tokens_per_sec"]
                                                  / row["peft"]["input_tokens_per_sec"])
    row["peak_rss_ratio_ours_over_peft"] = row["ours"]["peak_rss_mib"] / row["peft"]["peak_rss_mib"]
    row["tokens_per_sec_ratio_ours_remat_over_peft"] = (
        row["ours_remat"]["input_tokens_per_sec"] / row["peft"]["input_tokens_per_sec"])
    row["peak_rss_ratio_ours_remat_over_peft"] = (row["ours_remat"]["peak_rss_mib"]
                                                  / row["peft"]["peak_rss_mib"])
    row["prompt_over_full_finetune_flops"] = ours["flops"] / ours["full_finetune_flops"]
    full_step = float(np.median([t for r in runs[f"ours@{dropout}"]
                                 for t in r["full_finetune_step_seconds"]]))
    row["full_finetune_input_tokens_per_sec"] = BATCH * INPUT_LEN / full_step
    row["prompt_over_full_finetune_tokens_per_sec"] = (row["ours"]["input_tokens_per_sec"]
                                                       / row["full_finetune_input_tokens_per_sec"])
    row["achieved_gflops"] = ours["flops"] / row["ours"]["step_seconds"] / 1e9
    row["fraction_of_matmul_peak"] = row["achieved_gflops"] / peak
    summary[f"dropout {dropout}"] = row
  summary["matmul_peak_gflops_numpy_f32"] = peak
  summary["versions"] = {k: runs["peft@0.0"][0][k] for k in ("torch", "peft", "transformers")}
  with open(os.path.join(HERE, "train_step.json"), "w") as f:
    json.dump(dict(summary=summary, runs=runs), f, indent=1)
  lines = ["# Train step: prompt tuning here vs HF PEFT (CPU)", "",
           f"T5 1.1-small config, the same random weights; batch {BATCH}, inputs {INPUT_LEN} + "
           f"{PROMPT_LEN}-token prompt, targets {TARGET_LEN}; Adafactor 0.3. Medians over "
           f"{args.rounds} alternating rounds of {TIMED} timed steps after {WARMUP} warm-up. "
           "Rerun: `python benchmarks/train_step.py`.", "",
           "`ours`: unrolled layers, nothing recomputed. `ours_remat`: scanned layers, "
           "rematerialized except the outputs of weight matmuls (`T5Config.scan_layers=True, "
           "remat_policy='minimal'`). Both draw dropout masks from 8-bit random values "
           "(`T5Config.dropout_mask_bits=8`, the default).", "",
           "| dropout | system | input tokens/s | peak RSS MiB | tokens/s ratio | RSS ratio |",
           "| --- | --- | --- | --- | --- | --- |"]
  for key in ("dropout 0.0", "dropout 0.1"):
    row = summary[key]
    for system in SYSTEMS:
      r = row[system]
      extra = (f"{row[f'tokens_per_sec_ratio_{system}_over_peft']:.2f} | "
               f"{row[f'peak_rss_ratio_{system}_over_peft']:.2f}") if system != "peft" else " | "
      lines.append(f"| {key.split()[1]} | {system} | {r['input_tokens_per_sec']:.0f} | "
                   f"{r['peak_rss_mib']:.0f} | {extra} |")
  lines += ["", "Prompt tuning against full fine-tuning of the same model and batch (unrolled "
            "layers, the prompt present in both; full fine-tuning also trains it):", "",
            "| dropout | prompt tuning tokens/s | full fine-tuning tokens/s | tokens/s ratio | "
            "FLOPs ratio |", "| --- | --- | --- | --- | --- |"]
  for key in ("dropout 0.0", "dropout 0.1"):
    row = summary[key]
    lines.append(f"| {key.split()[1]} | {row['ours']['input_tokens_per_sec']:.0f} | "
                 f"{row['full_finetune_input_tokens_per_sec']:.0f} | "
                 f"{row['prompt_over_full_finetune_tokens_per_sec']:.2f} | "
                 f"{row['prompt_over_full_finetune_flops']:.2f} |")
  row = summary["dropout 0.0"]
  lines += ["", f"Prompt-step FLOPs / full fine-tuning FLOPs (XLA cost analysis, same batch): "
            f"{row['prompt_over_full_finetune_flops']:.2f}.",
            f"Achieved {row['achieved_gflops']:.0f} GFLOP/s at dropout 0 against a float32 "
            f"matmul peak of {peak:.0f} GFLOP/s (numpy, same run): "
            f"{100 * row['fraction_of_matmul_peak']:.0f}%."]
  with open(os.path.join(HERE, "train_step.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
