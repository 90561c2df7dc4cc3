"""Inference with a prompt-tuned model: this project vs HF PEFT, side by side.

T5 1.1-small config with the same random weights in both (see train_step.py)
and the same 100-token soft prompt (ours: `SoftPrompt`; HF: a PEFT
prompt-tuning model whose prompt embedding holds the same values); batch 8,
inputs 256 tokens. Workloads:

- greedy decoding and beam search (4 beams) of exactly 32 new tokens (EOS
  never ends a row, on either side): ours `decoding.generate`, HF
  `PeftModel.generate`;
- rank classification of 2 candidate targets of 4 tokens per example: ours
  `decoding.score_candidates` (one encoding, shared by the candidates); HF
  the usual forward with `labels` per candidate, and, as a stronger baseline
  written by hand, HF with the encoder output computed once and passed to
  each candidate's forward.

Each system runs in its own process (loading, compiling and warming up
there), the systems alternate over the rounds, and each figure is the median
over rounds of the median of REPEATS timed calls.

Run: python benchmarks/inference.py [--rounds 5]
(needs the [interop] extra). Writes results/<machine>/inference{suffix}.json
and .md.
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

BATCH, NEW_TOKENS, BEAMS, REPEATS = 8, 32, 4, 3
PROMPT_LEN = train_step.PROMPT_LEN
CANDIDATES = np.array([[37, 1974, 47, 1], [248, 55, 9, 1]], np.int32)
WORKLOADS = ("greedy", "beam", "rank")


def _prompt():
  rng = np.random.RandomState(1)
  return rng.uniform(-0.5, 0.5, size=(PROMPT_LEN, train_step.H)).astype(np.float32)


def _time(fn) -> list:
  return train_step.time_calls(fn, REPEATS)


def run_ours() -> dict:
  from prompt_tuning.cli import environment
  environment.configure(compilation_cache=False, tensorflow=False)
  import jax
  import jax.numpy as jnp
  train_step.exact_float32_matmuls()
  from prompt_tuning import decoding
  from prompt_tuning.models import presets
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning import trees as tree_lib
  flat = train_step._our_params()
  cfg = presets.preset("t5_1_1", "small")
  model = T5(cfg, encoder_prompt=soft.SoftPrompt(length=PROMPT_LEN,
                                                 init=initializers.random_uniform(0.5)))
  params = tree_lib.unflatten({k: jnp.asarray(v) for k, v in flat.items()})
  del flat
  params["encoder_prompt"] = {"prompt": jnp.asarray(_prompt())}
  enc = jnp.asarray(train_step._batch()[0])
  greedy_cfg = decoding.DecodingConfig(method="greedy", max_decode_length=NEW_TOKENS, eos_id=-1)
  beam_cfg = decoding.DecodingConfig(method="beam", max_decode_length=NEW_TOKENS, eos_id=-1,
                                     num_beams=BEAMS)
  greedy = jax.jit(lambda p, x: decoding.generate(model, p, x, greedy_cfg))
  beam = jax.jit(lambda p, x: decoding.generate(model, p, x, beam_cfg))
  rank = jax.jit(lambda p, x, c: decoding.score_candidates(model, p, x, c))
  cands = jnp.asarray(CANDIDATES)
  out = dict(greedy=_time(lambda: jax.block_until_ready(greedy(params, enc))),
             beam=_time(lambda: jax.block_until_ready(beam(params, enc))),
             rank=_time(lambda: jax.block_until_ready(rank(params, enc, cands))))
  # What each side computed, to check that both ran the same model.
  out["greedy_tokens"] = np.asarray(greedy(params, enc)[0]).tolist()
  out["rank_scores"] = np.asarray(rank(params, enc, cands)).tolist()
  out["device"] = str(jax.devices()[0].device_kind)
  out["jax"] = jax.__version__
  out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  return out


def run_hf() -> dict:
  import torch
  import transformers
  from peft import PromptTuningConfig, TaskType, get_peft_model
  from prompt_tuning.models import presets
  from prompt_tuning.readers import hf as hf_lib
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  cfg = presets.preset("t5_1_1", "small")
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      dropout_rate=0.0, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
  hf = transformers.T5ForConditionalGeneration(hf_cfg)
  hf.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.emb_dim))
  flat = train_step._our_params()
  for hf_name, (name, transpose) in hf_lib._name_map(cfg).items():
    value = flat.pop(name)
    with torch.no_grad():
      hf.get_parameter(hf_name).copy_(torch.from_numpy(np.ascontiguousarray(
          value.T if transpose else value)))
  del flat
  peft_cfg = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=PROMPT_LEN,
                                num_transformer_submodules=1)
  model = get_peft_model(hf, peft_cfg)
  with torch.no_grad():
    model.prompt_encoder["default"].embedding.weight.copy_(torch.from_numpy(_prompt()))
  model = model.to(dev).eval()
  enc = torch.from_numpy(train_step._batch()[0].astype(np.int64)).to(dev)
  mask = enc > 0
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

  def generate(beams):
    with torch.no_grad():
      out = model.generate(input_ids=enc, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=beams)
    sync()
    return out

  def rank():
    return hf_rank_scores(model, enc, mask, CANDIDATES, dev, sync)

  base = model.get_base_model()

  def rank_reuse():
    """The encoder (with the prompt in front, as PEFT does it) once, then each candidate."""
    with torch.no_grad():
      embeds = base.get_input_embeddings()(enc)
      prompt = model.get_prompt(batch_size=BATCH).to(embeds.dtype)
      full_mask = torch.cat([torch.ones(BATCH, PROMPT_LEN, dtype=mask.dtype, device=dev), mask], 1)
      encoded = base.encoder(inputs_embeds=torch.cat([prompt, embeds], 1),
                             attention_mask=full_mask)
      scores = []
      for c in CANDIDATES:
        labels = torch.from_numpy(np.tile(c, (BATCH, 1)).astype(np.int64)).to(dev)
        logits = base(encoder_outputs=encoded, attention_mask=full_mask, labels=labels).logits
        scores.append(torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])
                      .sum((1, 2)))
      out = torch.stack(scores, 1)
    sync()
    return out

  out = dict(greedy=_time(lambda: generate(1)), beam=_time(lambda: generate(BEAMS)),
             rank=_time(rank), rank_reuse=_time(rank_reuse))
  tokens = generate(1).cpu().numpy()
  out["greedy_tokens"] = tokens[:, 1:].tolist()  # drop the start token
  out["rank_scores"] = rank().cpu().numpy().tolist()
  out["rank_reuse_scores"] = rank_reuse().cpu().numpy().tolist()
  out.update(device=dev, torch=torch.__version__, transformers=transformers.__version__,
             peft=__import__("peft").__version__, torch_threads=torch.get_num_threads())
  return out


def _spawn(system: str) -> dict:
  return train_step.spawn_child(__file__, system)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--child")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--suffix", default="", help="ends the result's name")
  report.add_machine_flag(parser)
  parser.add_argument("--note", default="")
  args = parser.parse_args()
  if args.child:
    result = run_ours() if args.child == "ours" else run_hf()
    print("RESULT " + json.dumps(result))
    return
  runs, loads, info = train_step.alternate_rounds(
      ("ours", "hf"), _spawn, args.rounds,
      lambda r: {k: round(float(np.median(r[k])), 3) for k in WORKLOADS})
  med = lambda system, k: float(np.median([np.median(r[k]) for r in runs[system]]))  # noqa
  ours, hf = runs["ours"][0], runs["hf"][0]
  agree_greedy = float(np.mean(np.asarray(ours["greedy_tokens"]) == np.asarray(hf["greedy_tokens"])))
  rank_diff = float(np.max(np.abs(np.asarray(ours["rank_scores"]) - np.asarray(hf["rank_scores"]))))
  rows = {}
  for k, unit, count in (("greedy", "tokens/s", BATCH * NEW_TOKENS),
                         ("beam", "tokens/s", BATCH * NEW_TOKENS),
                         ("rank", "examples/s", BATCH)):
    rows[k] = dict(unit=unit, ours=count / med("ours", k), hf=count / med("hf", k),
                   ours_seconds=med("ours", k), hf_seconds=med("hf", k))
    rows[k]["ratio"] = rows[k]["ours"] / rows[k]["hf"]
  rows["rank"]["hf_encoder_reused"] = BATCH / med("hf", "rank_reuse")
  rows["rank"]["ratio_to_hf_encoder_reused"] = rows["rank"]["ours"] / rows["rank"]["hf_encoder_reused"]
  summary = dict(cpu=info, load_average_per_round=loads, rows=rows,
                 greedy_token_agreement=agree_greedy, rank_score_max_abs_diff=rank_diff,
                 versions=dict(jax=ours["jax"], xla_flags=ours["xla_flags"],
                               device=ours["device"], torch=hf["torch"],
                               transformers=hf["transformers"], peft=hf["peft"],
                               torch_device=hf["device"], torch_threads=hf["torch_threads"]))
  train_step.save("inference", args, summary, runs)


def markdown(result: dict) -> str | None:
  """inference*.md from its JSON (`main`); None for a file not written by `main`
  (the partial H100 run's, written by hand from its log)."""
  if "summary" not in result:
    return None
  summary = result["summary"]
  info, loads, rows, v = (summary["cpu"], summary["load_average_per_round"], summary["rows"],
                          summary["versions"])
  on_gpu = v["torch_device"] == "cuda"
  lines = [f"# Inference with a prompt-tuned model: this project vs HF PEFT "
           f"({'GPU' if on_gpu else 'CPU'})", "",
           f"Machine: {machine.describe(info)}"
           + (f"; JAX device {v['device']}, torch on CUDA" if on_gpu else "")
           + f". Load average at start {info['load_average'][0]:.1f}, per round "
           + ", ".join(f"{la[0]:.1f}" for la in loads) + ".",
           *([result["note"]] if result["note"] else []), "",
           f"T5 1.1-small config, the same random weights and the same {PROMPT_LEN}-token soft "
           f"prompt on both sides; batch {BATCH}, inputs {train_step.INPUT_LEN} tokens. Medians over "
           f"{result['rounds']} alternating rounds (one process per system and round) of the "
           f"median of {REPEATS} timed calls after warm-up. XLA flags: "
           f"`{v['xla_flags'] or '(none)'}`; jax {v['jax']}, torch {v['torch']} "
           f"({v['torch_threads']} threads), transformers {v['transformers']}, peft {v['peft']}. "
           f"Rerun: `{train_step.rerun('inference.py', result['argv'])}`.", "",
           "| workload | ours | HF PEFT | ratio | target |", "| --- | --- | --- | --- | --- |"]
  targets = dict(greedy=1.5, beam=1.5, rank=2.0)
  names = dict(greedy=f"greedy, {NEW_TOKENS} new tokens (tokens/s)",
               beam=f"beam search, {BEAMS} beams, {NEW_TOKENS} new tokens (tokens/s)",
               rank=f"rank classification, {len(CANDIDATES)} candidates (examples/s)")
  for k in WORKLOADS:
    r = rows[k]
    lines.append(f"| {names[k]} | {r['ours']:.1f} | {r['hf']:.1f} | **{r['ratio']:.2f}x** | "
                 f"{targets[k]}x: {'met' if r['ratio'] >= targets[k] else 'missed'} |")
  r = rows["rank"]
  lines += [f"| rank classification, HF with its encoder output reused by hand (examples/s) | "
            f"{r['ours']:.1f} | {r['hf_encoder_reused']:.1f} | {r['ratio_to_hf_encoder_reused']:.2f}x |"
            " (a stronger baseline than HF's usual call) |", "",
            f"Same model on both sides: {100 * summary['greedy_token_agreement']:.1f}% of greedy "
            f"tokens agree; rank scores differ by at most "
            f"{summary['rank_score_max_abs_diff']:.2g} (float32)."]
  return "\n".join(lines) + "\n"


def hf_rank_scores(model, enc, mask, candidates, device, sync):
  """PEFT/HF rank classification: each candidate target scored by a full forward
  pass (HF has no shared-encoder scoring); [batch, candidates] log-likelihoods."""
  import torch
  with torch.no_grad():
    scores = []
    for c in candidates:
      labels = torch.from_numpy(np.tile(c, (enc.shape[0], 1)).astype(np.int64)).to(device)
      logits = model(input_ids=enc, attention_mask=mask, labels=labels).logits
      scores.append(torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])
                    .sum((1, 2)))
    out = torch.stack(scores, 1)
  sync()
  return out


if __name__ == "__main__":
  main()

