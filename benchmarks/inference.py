"""Inference: greedy decoding and rank classification, this project vs HF transformers.

T5 1.1-small config with the same random weights in both (see train_step.py);
batch 8, inputs 256 tokens. Greedy decoding of exactly 32 new tokens (EOS
never ends a row, on either side); rank classification scores 2 candidate
targets of 4 tokens per example. Both systems run in this process, alternating
within rounds; medians reported.

Run: python benchmarks/inference.py   (needs the [interop] extra)
Writes inference.json and inference.md next to this file.
"""

import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

BATCH, INPUT_LEN, NEW_TOKENS, ROUNDS, REPEATS = 8, 256, 32, 3, 3


def main():
  import jax
  import jax.numpy as jnp
  import torch
  import transformers
  from prompt_tuning import decoding
  from prompt_tuning.models import presets
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.readers import hf as hf_lib
  from prompt_tuning import trees as tree_lib
  import train_step

  flat = train_step._our_params()
  cfg = presets.preset("t5_1_1", "small")
  model = T5(cfg)
  params = tree_lib.unflatten({k: jnp.asarray(v) for k, v in flat.items()})
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      dropout_rate=0.0, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
  hf = transformers.T5ForConditionalGeneration(hf_cfg)
  hf.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.emb_dim))
  state = {name: torch.from_numpy(np.ascontiguousarray(flat[ours].T if t else flat[ours]))
           for name, (ours, t) in hf_lib._name_map(cfg).items()}
  hf.load_state_dict(state, strict=False)
  hf.eval()

  enc, _, _ = train_step._batch()
  enc_t = torch.from_numpy(enc.astype(np.int64))
  dec_cfg = decoding.DecodingConfig(method="greedy", max_decode_length=NEW_TOKENS, eos_id=-1)
  gen = jax.jit(lambda p, x: decoding.generate(model, p, x, dec_cfg))
  cands = np.array([[37, 1974, 47, 1], [248, 55, 9, 1]], np.int32)
  score = jax.jit(lambda p, x, t: decoding.score(model, p, x, t))

  def ours_generate():
    jax.block_until_ready(gen(params, enc))

  def hf_generate():
    with torch.no_grad():
      hf.generate(input_ids=enc_t, attention_mask=enc_t > 0, max_new_tokens=NEW_TOKENS,
                  min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)

  def ours_rank():
    jax.block_until_ready([score(params, enc, np.tile(c, (BATCH, 1))) for c in cands])

  def hf_rank():
    with torch.no_grad():
      for c in cands:
        labels = torch.from_numpy(np.tile(c, (BATCH, 1)).astype(np.int64))
        logits = hf(input_ids=enc_t, attention_mask=enc_t > 0, labels=labels).logits
        torch.log_softmax(logits, -1).gather(-1, labels[..., None]).sum((1, 2))

  jobs = dict(ours_generate=ours_generate, hf_generate=hf_generate, ours_rank=ours_rank,
              hf_rank=hf_rank)
  for fn in jobs.values():  # warm-up and compile
    fn()
  times = {k: [] for k in jobs}
  for _ in range(ROUNDS):
    for name, fn in jobs.items():
      for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
  med = {k: float(np.median(v)) for k, v in times.items()}
  results = dict(
      greedy_tokens_per_sec=dict(ours=BATCH * NEW_TOKENS / med["ours_generate"],
                                 hf=BATCH * NEW_TOKENS / med["hf_generate"]),
      rank_examples_per_sec=dict(ours=BATCH / med["ours_rank"], hf=BATCH / med["hf_rank"]),
      median_seconds=med, versions=dict(jax=jax.__version__, torch=torch.__version__,
                                        transformers=transformers.__version__))
  g, r = results["greedy_tokens_per_sec"], results["rank_examples_per_sec"]
  results["greedy_ratio_ours_over_hf"] = g["ours"] / g["hf"]
  results["rank_ratio_ours_over_hf"] = r["ours"] / r["hf"]
  with open(os.path.join(HERE, "inference.json"), "w") as f:
    json.dump(results, f, indent=1)
  lines = ["# Inference: this project vs HF transformers (CPU)", "",
           f"T5 1.1-small config, the same random weights; batch {BATCH}, inputs {INPUT_LEN}. "
           f"Medians of {ROUNDS} alternating rounds x {REPEATS}. Rerun: "
           "`python benchmarks/inference.py`.", "",
           "| workload | ours | HF | ratio |", "| --- | --- | --- | --- |",
           f"| greedy decoding, {NEW_TOKENS} new tokens (tokens/s) | {g['ours']:.0f} | "
           f"{g['hf']:.0f} | {g['ours'] / g['hf']:.2f}x |",
           f"| rank classification, 2 candidates (examples/s) | {r['ours']:.1f} | "
           f"{r['hf']:.1f} | {r['ours'] / r['hf']:.2f}x |", "",
           "Target: greedy decoding at least 1.5x HF `generate`."]
  with open(os.path.join(HERE, "inference.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
