"""Evidence for Levine et al. (2022)'s three methods on the quickstart's backbone.

Parts (each on the quickstart's `small` synthetic backbone, frozen; every
method trained with adam at one learning rate for the same steps; mean and
spread over seeds):

1. cost: trainable parameters and train-step time of each method relative to
   plain prompt tuning (one process, methods alternating round by round,
   medians of the rounds).
2. idpt: ID-PT (a frozen-encoder reading + queries) vs one static prompt,
   both trained on one mixture of held-out formats (the bare words of
   reverse, sort and rotate: no instruction and no task index), equal steps;
   exact match per task on unseen words.
3. reader: a synthetic open-book QA set whose facts live only in 10,000
   passages (prompt_tuning.retrieval.synthetic); BM25 recall@1/5/20, and
   closed-book prompt tuning vs the frozen reader at k = 1, 5 (and 20
   without --quick), exact match on questions about people no training
   question names. This part runs on its own backbone: the same small size,
   pretrained on `reading_pretrain` (the synthetic tasks plus copying the last
   word of a longer input, in another format, prompt_tuning.tasks.reading;
   2000 steps, cached after the first run), because the quickstart's backbone
   never learned to copy a span out of a passage. Each (question, passage)
   segment is 33 bytes, nothing cut.
   reader_answers (not in the default parts): seed 0 of the same runs again,
   with what its answers are (an answer of the question's relation at all,
   the top passage's answer, the answer of some passage read).
4. recursion: a two-step task, rotate(reverse(word)) in the bare format; one
   pass with a prompt vs textual recursion (prompt 1 is the one-pass prompt,
   prompt 2 trained on input + pass 1's answer) vs neural recursion.

Run: python benchmarks/giants.py [--quick]  (writes results/<machine>/giants.json
and giants.md; --quick: giants_quick.*, fewer steps, seeds and examples, k up to 5).
--parts picks parts; --merge keeps the parts already in the JSON file (the
file lists every command that wrote it); --reader_steps, --reader_lr,
--reader_batch_size, --reader_ks and --reader_eval_examples set the reader
parts alone (--answers_ks: reader_answers' k). The committed giants_quick.*
were made by `--quick`, then `--quick --merge --parts reader ...` and
`--quick --merge --parts reader_answers ...` (each command, with its flags,
is in the file).
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import machine, report  # noqa: E402

P = 8  # prompt length of every method


def encode(text: str) -> list[int]:
  return [b + 3 for b in text.encode()]  # seqio's ByteVocabulary


class _Bytes:
  encode = staticmethod(encode)


def decode(ids) -> str:
  out = []
  for i in ids:
    if i == 1:
      break
    if 3 <= i < 259:  # bytes; the table's extra rows decode to nothing
      out.append(i - 3)
  return bytes(out).decode(errors="replace")


def batch_of(inputs, targets, in_len, tgt_len):
  import jax.numpy as jnp
  n = len(inputs)
  enc = np.zeros((n, in_len), np.int32)
  tgt = np.zeros((n, tgt_len), np.int32)
  for i, (x, y) in enumerate(zip(inputs, targets)):
    xs = x if isinstance(x, np.ndarray) else np.asarray((encode(x) + [1])[:in_len])
    enc[i, :len(xs)] = xs
    ys = (encode(y) + [1])[:tgt_len]
    tgt[i, :len(ys)] = ys
  dec = np.concatenate([np.zeros((n, 1), np.int32), tgt[:, :-1]], 1)
  return dict(encoder_input_tokens=jnp.asarray(enc), decoder_input_tokens=jnp.asarray(dec),
              decoder_target_tokens=jnp.asarray(tgt),
              decoder_loss_weights=jnp.asarray((tgt > 0).astype(np.float32)))


def train(spec, data, steps, batch_size, in_len, tgt_len, seed, lr):
  """Adam on the spec's trainable part; returns (setup, trainable)."""
  import jax
  import optax
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.train import step as step_lib
  s = setup_lib.build(spec, seed=seed)
  opt = optax.adam(lr)
  step = jax.jit(step_lib.make_train_step(s.model, opt))
  trainable, state = s.trainable, opt.init(s.trainable)
  rng = np.random.RandomState(seed)
  inputs, targets = data
  for i in range(steps):
    idx = rng.randint(0, len(inputs), batch_size)
    b = batch_of([inputs[j] for j in idx], [targets[j] for j in idx], in_len, tgt_len)
    trainable, state, _ = step(trainable, state, s.frozen, b, jax.random.PRNGKey(i))
  return s, trainable


def exact_match(s, trainable, data, in_len, tgt_len, batch_size=32,
                predictions=None) -> float:
  """Exact match (%) of greedy decoding; appends the decoded texts to `predictions`."""
  import jax
  from prompt_tuning import decoding
  from prompt_tuning.runtime import freezing
  params = freezing.merge(trainable, s.frozen)
  cfg = decoding.DecodingConfig(max_decode_length=tgt_len, use_cache=False)
  gen = jax.jit(lambda p, x: decoding.generate(s.model, p, x, cfg)[0])
  inputs, targets = data
  hits = 0
  for i in range(0, len(inputs), batch_size):
    chunk = list(range(i, min(i + batch_size, len(inputs))))
    b = batch_of([inputs[j] for j in chunk] + [inputs[0]] * (batch_size - len(chunk)),
                 [targets[j] for j in chunk] + [targets[0]] * (batch_size - len(chunk)),
                 in_len, tgt_len)
    out = np.asarray(gen(params, b["encoder_input_tokens"]))
    texts = [decode(out[r]) for r in range(len(chunk))]
    hits += sum(t == targets[j] for t, j in zip(texts, chunk))
    if predictions is not None:
      predictions.extend(texts)
  return 100.0 * hits / len(inputs)


def count(tree) -> int:
  import jax
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def mean_sd(values):
  return dict(mean=float(np.mean(values)), sd=float(np.std(values, ddof=1)) if len(values) > 1
              else 0.0, values=[float(v) for v in values])


# --- specs -------------------------------------------------------------------------


def specs(backbone, cfg):
  from prompt_tuning.prompts import input_dependent as idp
  from prompt_tuning.prompts import recursive, soft
  from prompt_tuning.retrieval import reader
  from prompt_tuning.runtime.specs import ModelSpec
  base = ModelSpec(cfg, checkpoint=backbone)
  return {
      "prompt tuning": lambda: base.replace(encoder_prompt=soft.SoftPrompt(P)),
      "ID-PT": lambda: base.replace(
          encoder_prompt=idp.FrozenReadingPrompt(P, width=64, num_layers=2, num_heads=4,
                                                 mlp_dim=128),
          model_class=idp.InputDependentT5),
      "frozen reader": lambda k=5: base.replace(
          encoder_prompt=reader.RetrievalPrompt(P),
          model_class=functools.partial(reader.FusionInDecoderT5, num_passages=k)),
      "textual recursion": lambda first=None: base.replace(
          encoder_prompt=recursive.RecursionPrompts(
              P, **({} if first is None else {"first_init": lambda *a: first})),
          model_class=functools.partial(recursive.TextualRecursionT5, answer_length=8),
          trainable_rules=(("encoder_prompt/second", True), (".*", False))),
      "neural recursion": lambda: base.replace(
          encoder_prompt=recursive.RecursionPrompts(P, neural=True, connector_width=64,
                                                    num_heads=4, mlp_dim=128),
          model_class=recursive.NeuralRecursionT5),
  }


# --- parts ---------------------------------------------------------------------------


def part_cost(make, rounds, batch_size=16, reader_ks=(1, 5, 20), segment_length=33,
              input_length=16, target_length=8):
  """Trainable parameters and median train-step seconds, methods alternating.

  The frozen reader is timed at each k of the reader part, on segments of the
  reader part's length (33: the longest question + passage, EOS included);
  the other methods on inputs of `input_length` tokens.
  """
  import jax
  import optax
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.train import step as step_lib
  words = ["abcde", "hgfa", "cabd"] * batch_size
  methods = {}
  for name, fn in make.items():
    if name == "frozen reader":
      methods.update({f"frozen reader k={k}": (functools.partial(fn, k), k) for k in reader_ks})
    else:
      methods[name] = (fn, 0)
  steps = {}
  for name, (fn, k) in methods.items():
    s = setup_lib.build(fn())
    opt = optax.adam(1e-3)
    if k:
      seg = np.zeros((k, segment_length), np.int32)
      seg[:, :6] = 7
      b = batch_of([seg.reshape(-1)] * batch_size, words[:batch_size], k * segment_length,
                   target_length)
    else:
      b = batch_of(words[:batch_size], words[:batch_size], input_length, target_length)
    step = jax.jit(step_lib.make_train_step(s.model, opt))
    state = (s.trainable, opt.init(s.trainable))
    out = step(*state, s.frozen, b, jax.random.PRNGKey(0))
    jax.block_until_ready(out)
    steps[name] = (step, state, s.frozen, b, count(s.trainable))
  times = {name: [] for name in steps}
  cpu = {name: [] for name in steps}  # the process's CPU seconds: steadier on a shared machine
  for r in range(rounds):
    for name, (step, state, frozen, b, _) in steps.items():
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(step(*state, frozen, b, jax.random.PRNGKey(r)))
      times[name].append(time.perf_counter() - t)
      cpu[name].append(time.process_time() - c)
  base = statistics.median(times["prompt tuning"])
  base_cpu = statistics.median(cpu["prompt tuning"])
  return {name: dict(trainable_params=steps[name][4],
                     step_ms=1000 * statistics.median(t),
                     step_time_vs_prompt_tuning=statistics.median(t) / base,
                     cpu_ms=1000 * statistics.median(cpu[name]),
                     cpu_time_vs_prompt_tuning=statistics.median(cpu[name]) / base_cpu)
          for name, t in times.items()}


def part_idpt(make, steps, seeds, n_eval):
  from prompt_tuning.tasks import synthetic
  tasks = ("reverse", "sort", "rotate")
  train_in, train_out = [], []
  for t in tasks:
    ex = synthetic.examples(t, "train", 2000, instruction=False, salt="/bare")
    train_in += ex["inputs"]
    train_out += ex["targets"]
  evals = {t: synthetic.examples(t, "validation", n_eval, instruction=False, salt="/bare")
           for t in tasks}
  out = {}
  for name in ("prompt tuning", "ID-PT"):
    per_task = {t: [] for t in tasks}
    for seed in range(seeds):
      s, trained = train(make[name](), (train_in, train_out), steps, 32, 16, 8, seed, 1e-2)
      for t in tasks:
        per_task[t].append(exact_match(s, trained, (evals[t]["inputs"], evals[t]["targets"]),
                                       16, 8))
      print(name, seed, {t: v[-1] for t, v in per_task.items()}, flush=True)
    out[name] = {t: mean_sd(v) for t, v in per_task.items()}
    out[name]["mean over tasks"] = mean_sd(np.mean([per_task[t] for t in tasks], axis=0))
  return out


# The frozen reader's segment: the question, then one passage ("bak dos home? bak dos
# home tarun"). Not the format the reading backbone was pretrained on (`tail: ...`).
READER_TEMPLATE = "{question}? {passage}"
READING_STEPS = 2000  # pretraining steps of the reader's backbone (about 12 min, 2 cores)


def reading_backbone():
  """The quickstart's small backbone pretrained on `reading_pretrain` (the synthetic
  tasks plus copying a span, prompt_tuning.tasks.reading), trained once, then cached."""
  from prompt_tuning import backbones
  from prompt_tuning.tasks import reading
  return backbones.pretrain(backbones.PretrainConfig(
      size="small", steps=READING_STEPS, mixture="reading_pretrain",
      inputs_length=reading.FEATURE_LENGTHS["inputs"]), progress=False)


def prior_exact_match(train_rows, validation_rows) -> float:
  """Exact match (%) of the best closed-book guess: each relation's most common
  training answer (the relation is the question's last word)."""
  import collections
  counts = collections.defaultdict(collections.Counter)
  for r in train_rows:
    counts[r["question"].split()[-1]][r["answer"]] += 1
  guess = {rel: c.most_common(1)[0][0] for rel, c in counts.items()}
  return 100.0 * float(np.mean([guess.get(r["question"].split()[-1]) == r["answer"]
                                for r in validation_rows]))


def part_reader(backbone, make, steps, *, seeds, n_eval, ks, workdir, lr, batch_size,
                done=lambda result: None):
  """Closed-book prompt tuning vs the frozen reader at each k on the reading backbone;
  `done(result so far)` after each method (a run cut short keeps what finished)."""
  from prompt_tuning.retrieval import bm25, store, synthetic as obqa
  from prompt_tuning.retrieval.tasks import segments
  from prompt_tuning.tasks import reading
  paths = obqa.write(workdir, num_passages=10_000, num_train=4000, num_validation=n_eval)
  st = store.PassageStore.from_files(paths["passages"])
  retriever = bm25.BM25Retriever(st)
  rows = {s: [json.loads(x) for x in open(paths[s])] for s in ("train", "validation")}
  q = {s: [r["question"] for r in rows[s]] for s in rows}
  a = {s: [r["answer"] for r in rows[s]] for s in rows}
  gold = [st.position(r["passage_id"]) for r in rows["validation"]]
  # The longest (question, passage) segment, EOS included: nothing is ever cut.
  seg_len = 1 + max(len(READER_TEMPLATE.format(question=x, passage=""))
                    for x in q["train"] + q["validation"]) + max(len(p.contents) for p in st)
  result = {"store_passages": len(st), "segment_length": seg_len,
            "template": READER_TEMPLATE, "train_questions": len(q["train"]),
            "validation_questions": len(q["validation"]),
            "answers_per_relation": len(next(iter(obqa.RELATIONS.values()))),
            "backbone": os.path.basename(backbone),
            "closed_book_prior_exact_match": prior_exact_match(rows["train"],
                                                               rows["validation"]),
            "recall_at_k": {str(k): v for k, v in bm25.recall_at_k(
                retriever, q["validation"], gold, (1, 5, 20)).items()}}
  tops = {s: retriever.retrieve(q[s], max(ks))[0] for s in q}
  # The skill the backbone was pretrained for, in its own format, with no prompt.
  from prompt_tuning.runtime import setup as setup_lib
  tail = reading.examples("tail", "validation", n_eval)
  bare = setup_lib.build(make["prompt tuning"]().replace(encoder_prompt=None),
                         require_trainable=False)
  result["backbone_tail_exact_match"] = exact_match(
      bare, bare.trainable, (tail["inputs"], tail["targets"]),
      reading.FEATURE_LENGTHS["inputs"], 8)
  print("tail, no prompt", result["backbone_tail_exact_match"], flush=True)

  def data(split, k):
    if k == 0:
      return q[split], a[split]
    return ([segments(_Bytes, question, [st[j].contents for j in top[:k]], seg_len,
                      READER_TEMPLATE)
             for question, top in zip(q[split], tops[split])], a[split])
  def shares(predictions, k):
    """What seed 0's answers are: each a share (%) of the validation questions."""
    rel = [x.split()[-1] for x in q["validation"]]
    last = [[st[j].contents.split()[-1] for j in top[:max(k, 1)]] for top in tops["validation"]]
    mean = lambda xs: 100.0 * float(np.mean(xs))  # noqa: E731
    return {"an answer of the question's relation": mean(
                [p in obqa.RELATIONS[r] for p, r in zip(predictions, rel)]),
            "the top passage's answer": mean([p == w[0] for p, w in zip(predictions, last)]),
            "the answer of a passage read": mean(
                [p in w for p, w in zip(predictions, last)]) if k else None}
  for k in (0, *ks):
    name = "closed-book prompt tuning" if k == 0 else f"frozen reader k={k}"
    spec = make["prompt tuning"]() if k == 0 else make["frozen reader"](k)
    in_len = 16 if k == 0 else k * seg_len
    scores, predictions = [], []
    for seed in range(seeds):
      t = time.time()
      s, trained = train(spec, data("train", k), steps, batch_size, in_len, 8, seed, lr)
      scores.append(exact_match(s, trained, data("validation", k), in_len, 8, batch_size=16,
                                predictions=predictions if seed == 0 else None))
      print(name, seed, scores[-1], f"{time.time() - t:.0f} s", flush=True)
    result[name] = {**mean_sd(scores), "seed 0 answers": shares(predictions, k)}
    done(result)
  return result


def part_recursion(make, steps, seeds, n_eval):
  from prompt_tuning.tasks import synthetic
  compose = lambda w: (lambda r: r[1:] + r[:1])(w[::-1])  # noqa: E731  rotate(reverse(w))
  tr = synthetic.words("train", 4000, salt="compose")
  ev = synthetic.words("validation", n_eval, salt="compose")
  train_data = (tr, [compose(w) for w in tr])
  eval_data = (ev, [compose(w) for w in ev])
  out = {k: [] for k in ("one pass with a prompt", "textual recursion", "neural recursion")}
  for seed in range(seeds):
    s, one = train(make["prompt tuning"](), train_data, steps, 32, 16, 8, seed, 1e-2)
    out["one pass with a prompt"].append(exact_match(s, one, eval_data, 16, 8))
    first = np.asarray(one["encoder_prompt"]["prompt"])
    s, two = train(make["textual recursion"](first), train_data, steps, 32, 16, 8, seed, 1e-2)
    out["textual recursion"].append(exact_match(s, two, eval_data, 16, 8))
    s, neural = train(make["neural recursion"](), train_data, steps, 32, 16, 8, seed, 1e-2)
    out["neural recursion"].append(exact_match(s, neural, eval_data, 16, 8))
    print("recursion", seed, {k: v[-1] for k, v in out.items()}, flush=True)
  return {k: mean_sd(v) for k, v in out.items()}


def markdown(res) -> str:
  m = res["machine"]
  lines = ["# Levine et al. (2022) on the quickstart backbone", "",
           "Made by " + ", then ".join(f"`{c}`" for c in res.get(
               "commands", ["python benchmarks/giants.py" + (" --quick" if res["quick"] else "")]))
           + (" (later runs merged into the earlier ones' file)"
              if len(res.get("commands", [])) > 1 else "") + ". "
           f"Machine: {m['cpu_model']}, {m['cores']} cores, AVX-512: "
           f"{'yes' if m['avx512'] else 'no'} (AVX2: {'yes' if m['avx2'] else 'no'}), "
           f"load average at start {m['load_average'][0]:.1f} (shared machine).", "",
           f"Settings: {json.dumps(res['settings'])}", ""]
  if "cost" in res:
    lines += ["## Trainable parameters and train-step time", "",
              "| method | trainable params | step ms (median) | vs prompt tuning |",
              "| --- | ---: | ---: | ---: |"]
    for name, r in res["cost"].items():
      lines.append(f"| {name} | {r['trainable_params']:,} | {r['step_ms']:.1f} | "
                   f"{r['step_time_vs_prompt_tuning']:.2f}x |")
    lines += ["", "The frozen reader's step at k reads k passages of 33 tokens (the reader "
              "part's segments), the others 16 input tokens; batch 16.", ""]

  def row(name, r):
    return f"| {name} | {r['mean']:.1f} ± {r['sd']:.1f} | {', '.join(f'{v:.1f}' for v in r['values'])} |"
  if "idpt" in res:
    lines += ["## ID-PT vs one static prompt (mixture of held-out formats, equal steps)", "",
              "**A demonstration that runs, not evidence: it cannot separate the methods.** "
              "The formats carry no task marker and their inputs look alike, so no method "
              "can tell the task from the input; 3 seeds, no significance test, and the "
              "two sides train different parameter counts. ID-PT's claim is tested against "
              "equal-budget controls in idpt_miniature.md (`python -m "
              "benchmarks.research.idpt`, issue 35).", "",
              "Exact match (%), mean ± sd over seeds.", "",
              "| method / task | exact match | per seed |", "| --- | ---: | --- |"]
    for name, per in res["idpt"].items():
      for t, r in per.items():
        lines.append(row(f"{name} / {t}", r))
    lines.append("")
  if "reader" in res:
    r, st = res["reader"], res["settings"]
    lines += ["## Frozen reader (open-book QA, 10,000 passages)", "",
              "**A demonstration that runs, not evidence: this question set is capped.** No "
              "reader can exceed about 81% here (many questions give only a last name that "
              "about 41 people share, so reading more passages cannot help by construction), "
              "and there is no fine-tuned reader to compare with. The frozen reader is "
              "tested on the dictionary's open-book QA instead (docs/open_book.md).", "",
              f"Backbone: `{r['backbone']}` (the small quickstart backbone pretrained on "
              "`reading_pretrain`: the synthetic tasks plus copying the last word of a "
              "longer input, `tail: kag fo mivu parl` -> `parl`, "
              "prompt_tuning.tasks.reading); frozen. Its exact match on that task's unseen "
              f"words, no prompt: {r['backbone_tail_exact_match']:.1f}%.", "",
              f"Each segment is `{r['template']}` ({r['segment_length']} bytes, nothing cut), "
              f"e.g. `bak dos home? bak dos home tarun`; the frozen reader encodes k of them "
              f"separately and decodes from all. {r['train_questions']} training questions, "
              f"{r['validation_questions']} validation questions about people no training "
              f"question names; {st['seeds']} seeds, {st['reader_steps']} steps of adam at "
              f"{st['reader_lr']}, batch {st['reader_batch_size']}, prompt length {P}. "
              f"Closed-book chance (one of {r['answers_per_relation']} answers per relation): "
              f"{100 / r['answers_per_relation']:.1f}%; the best closed-book guess (each "
              "relation's most common training answer) scores "
              f"{r['closed_book_prior_exact_match']:.1f}% on these validation questions.", "",
              "BM25 recall@k on the validation questions: " + ", ".join(
                  f"@{k} {100 * v:.1f}%" for k, v in r["recall_at_k"].items()), "",
              "| method | exact match | per seed |", "| --- | ---: | --- |"]
    for name, v in r.items():
      if isinstance(v, dict) and "mean" in v:
        lines.append(row(name, v))
    lines.append("")
  if "reader_answers" in res:
    r = res["reader_answers"]
    lines += ["### What the reader answers (seed 0, run again)", "",
              "Share (%) of the validation questions whose answer is ... ("
              "`--parts reader_answers`: seed 0 of each method trained again with the same "
              "settings; its exact match is in the first column).", "",
              "| method | exact match | an answer of the question's relation | the top "
              "passage's answer | the answer of a passage read |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, v in r.items():
      if isinstance(v, dict) and "mean" in v:
        a = v["seed 0 answers"]
        lines.append(f"| {name} | {v['mean']:.1f} | " + " | ".join(
            "-" if a[c] is None else f"{a[c]:.1f}" for c in (
                "an answer of the question's relation", "the top passage's answer",
                "the answer of a passage read")) + " |")
    lines.append("")
  if "recursion" in res:
    lines += ["## Recursion: rotate(reverse(word)), bare format", "",
              "| method | exact match | per seed |", "| --- | ---: | --- |"]
    for name, v in res["recursion"].items():
      lines.append(row(name, v))
    lines.append("")
  lines += ["## What was and was not run", "", res["notes"], ""]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--parts", default="cost,idpt,reader,recursion")
  parser.add_argument("--out", default=None,
                      help="folder of the results (default: results/<machine>/)")
  report.add_machine_flag(parser)
  parser.add_argument("--merge", action="store_true",
                      help="keep the parts already in the JSON file and add those run now")
  parser.add_argument("--reader_steps", type=int, default=0, help="0: the mode's steps")
  parser.add_argument("--reader_lr", type=float, default=3e-2)
  parser.add_argument("--reader_batch_size", type=int, default=8)
  parser.add_argument("--reader_eval_examples", type=int, default=0,
                      help="validation questions; 0: the mode's evaluation examples")
  parser.add_argument("--reader_ks", default="", help="e.g. 1,5; empty: the mode's")
  parser.add_argument("--answers_ks", default="", help="reader_answers' k; empty: reader_ks")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from prompt_tuning import backbones
  info = machine.cpu_info()
  print("CPU:", machine.describe(info), flush=True)
  backbone = backbones.pretrain(backbones.PretrainConfig(size="small"), progress=False)
  cfg = backbones.backbone_config("small")
  make = specs(backbone, cfg)
  q = args.quick
  settings = dict(steps=150 if q else 1000, seeds=3, eval_examples=64 if q else 256,
                  reader_ks=[1, 5] if q else [1, 5, 20], cost_rounds=5 if q else 20,
                  prompt_length=P)
  res = dict(quick=q, machine=info, settings=settings, notes="")
  out_dir = args.out or machine.results_dir(args.machine)
  name = "giants" + ("_quick" if q else "")
  stem = os.path.join(out_dir, name)
  if args.merge and os.path.exists(stem + ".json"):
    res = {**json.load(open(stem + ".json")), "machine": info}
    settings = res["settings"] = {**settings, **res["settings"]}

  res["commands"] = res.get("commands", []) + [
      " ".join(["python benchmarks/giants.py", *(argv if argv is not None else sys.argv[1:])])]

  def save():
    res["notes"] = notes(res, args.parts.split(","))
    report.write(name, res, out_dir=out_dir)
  parts = args.parts.split(",")
  if "cost" in parts:
    res["cost"] = part_cost(make, settings["cost_rounds"])
    save()
  if "idpt" in parts:
    res["idpt"] = part_idpt(make, settings["steps"], settings["seeds"],
                            settings["eval_examples"])
    save()
  if "reader" in parts or "reader_answers" in parts:
    if args.reader_ks:
      settings["reader_ks"] = [int(k) for k in args.reader_ks.split(",")]
    settings.update(reader_steps=args.reader_steps or settings["steps"],
                    reader_lr=args.reader_lr, reader_batch_size=args.reader_batch_size,
                    reader_eval_examples=args.reader_eval_examples or settings["eval_examples"])
    reader_backbone = reading_backbone()
    reader = functools.partial(
        part_reader, reader_backbone, specs(reader_backbone, cfg), settings["reader_steps"],
        n_eval=settings["reader_eval_examples"],
        workdir=os.path.join("/tmp", "giants_obqa"), lr=args.reader_lr,
        batch_size=args.reader_batch_size)
  for part in ("reader", "reader_answers"):  # reader_answers: seed 0 again, for its answers
    if part in parts:
      res.pop(part, None)  # An earlier run's figures are not these.
      ks = settings["reader_ks"]
      if part == "reader_answers" and args.answers_ks:
        ks = settings["reader_answers_ks"] = [int(k) for k in args.answers_ks.split(",")]
      res[part] = reader(seeds=settings["seeds"] if part == "reader" else 1, ks=ks,
                         done=lambda r, part=part: (res.update({part: r}), save()))
      save()
  if "recursion" in parts:
    res["recursion"] = part_recursion(make, settings["steps"], settings["seeds"],
                                      settings["eval_examples"])
    save()
  save()


def notes(res, parts) -> str:
  done = [p for p in ("cost", "idpt", "reader", "recursion") if p in res]
  missing = [p for p in ("cost", "idpt", "reader", "recursion") if p not in res]
  s = res["settings"]
  text = (f"Ran: {', '.join(done) or 'nothing'}"
          f"{'; not run (time ran out or not asked): ' + ', '.join(missing) if missing else ''}. "
          f"{'Quick mode: ' if res['quick'] else ''}{s['steps']} train steps per method, "
          f"{s['seeds']} seeds, {s['eval_examples']} evaluation examples"
          + (f"; the reader part: {s['reader_steps']} steps, "
             f"{s.get('reader_eval_examples', s['eval_examples'])} validation questions, k in "
             f"{s['reader_ks']}" if "reader" in res else "") + ". Steps are far fewer than the paper's; the figures show "
          "the methods run end to end on the frozen backbone and how they compare at "
          "this budget, not converged accuracy. Timings are in-process (jit once, then "
          "methods alternate each round), on a shared 2-core machine under load.")
  return " ".join([text, *res.get("remarks", [])])


if __name__ == "__main__":
  main()
