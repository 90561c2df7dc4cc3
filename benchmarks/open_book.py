"""Open-book QA over the dictionary: the frozen reader against its controls (issue 35.1).

Levine et al. (2022, sec. 4) claim that a frozen T5 reading retrieved
passages through a prompt, with a re-ranker, rivals readers whose weights
are all fine-tuned. This benchmark tests that on the miniature's `m`
backbone (the size where prompt tuning learns at a few hundred steps),
with the dictionary's open book (`tasks/dictionary_qa.py`, docs/open_book.md):
171,910 passages, questions about entries the backbone never saw.

The methods all start from the same frozen `m` checkpoint. They train for the
same steps, batch and data order, and are scored by exact match on the same
test questions (the first `eval` of the test split):

  closed-book prompt tuning   a soft prompt, the question alone
  frozen reader k=1, 5, 20    a soft prompt on each (question, passage) segment of
                              BM25's top k, read Fusion-in-Decoder style
  frozen reader, re-ranked    the same, BM25's top 20, the re-ranker keeps 5
  fine-tuned FiD reader k=5   every weight trained, no prompt, BM25's top 5
  oracle reader               the frozen reader given the gold passage (the ceiling)

The optimizers are the research suite's. Prompts (and the re-ranker) train
with prompt tuning's Adafactor at `--prompt_lr` (0.3), and the fine-tuned
reader with Adafactor at `--finetune_lr` (1e-3). Each rate is the best of a 3-point sweep
on 400 validation questions, one seed, at the run's steps (`--sweep`; the
rates chosen are in the JSON).

Statistics follow benchmarks/research/stats.py. Each method gets `--seeds`
seeds (5 in the full run). Means are compared across seeds with an exact
permutation test, and Welch's 95% interval goes with the effect. Paired per
example, McNemar's exact test is run on the same test questions, each seed
of one method against the same seed of the other. The verdicts are
"reproduced (p < 0.05)", "contradicted (p < 0.05)", "inconclusive" or "not
testable here: <reason>".

Run: python benchmarks/open_book.py [--quick]
(writes results/<machine>/open_book.json and .md; --quick: open_book_quick.*,
2 seeds, 4 steps, 16 test questions: it shows the run end to end, in about 2 minutes
on an idle 2-core machine with the book cached).
"""

import argparse
import functools
import json
import os
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import machine, report  # noqa: E402

SIZE = "m"
P = 10             # prompt length of every prompted method
TARGET_LENGTH = 12  # the longest answer is 11 pieces with EOS
CLAIM = ("Levine 2022: a frozen reader with re-ranking rivals a fine-tuned reader "
         "(frozen m, re-ranker keeps 5 of BM25's 20, vs every weight trained reading BM25's 5)")
# name -> (open-book mode, reader kind)
METHODS = {
    "closed-book prompt tuning": ("closed", "prompt"),
    "frozen reader k=1": ("k1", "reader"),
    "frozen reader k=5": ("k5", "reader"),
    "frozen reader k=20": ("k20", "reader"),
    "frozen reader, re-ranked 5 of 20": ("rerank5of20", "reader"),
    "fine-tuned FiD reader k=5": ("k5", "finetune"),
    "oracle reader (gold passage)": ("oracle", "reader"),
}


def spec_of(kind: str, mode: str, backbone: str, cfg):
  from prompt_tuning.prompts import soft
  from prompt_tuning.retrieval import reader
  from prompt_tuning.runtime import freezing
  from prompt_tuning.runtime.specs import ModelSpec
  from prompt_tuning.tasks import dictionary_qa as dq
  base = ModelSpec(cfg, checkpoint=backbone)
  if kind == "prompt":
    return base.replace(encoder_prompt=soft.SoftPrompt(P))
  retrieved, read = dq.READERS.get(mode, (1, 1))
  fid = functools.partial(reader.FusionInDecoderT5, num_passages=read,
                          num_candidates=retrieved if retrieved > read else 0)
  if kind == "finetune":
    return base.replace(model_class=fid, trainable_rules=freezing.FULL_FINETUNING_RULES)
  return base.replace(encoder_prompt=reader.RetrievalPrompt(P), model_class=fid)


def targets_of(answers, encode) -> np.ndarray:
  out = np.zeros((len(answers), TARGET_LENGTH), np.int32)
  for i, ids in enumerate(encode(list(answers))):
    ids = (list(ids) + [1])[:TARGET_LENGTH]
    out[i, :len(ids)] = ids
  return out


def batch(inputs, targets):
  import jax.numpy as jnp
  dec = np.concatenate([np.zeros((len(targets), 1), np.int32), targets[:, :-1]], 1)
  return dict(encoder_input_tokens=jnp.asarray(inputs), decoder_input_tokens=jnp.asarray(dec),
              decoder_target_tokens=jnp.asarray(targets),
              decoder_loss_weights=jnp.asarray((targets > 0).astype(np.float32)))


def train(spec, data, steps, batch_size, seed, lr, compiled=None):
  """Adafactor on the spec's trainable part, batches drawn by `seed`; (setup, trainable, s/step).

  `compiled`: a dict shared by the seeds of one method, so that its step is
  compiled once (the seeds differ in their initial prompt and data order only).
  """
  import jax
  import optax
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.train import step as step_lib
  from prompt_tuning.runtime import freezing
  from prompt_tuning.train import optimizers
  compiled = {} if compiled is None else compiled
  s = setup_lib.build(spec, seed=seed)
  # The research suite's optimizers: Adafactor as prompt tuning uses it for prompts
  # (and the re-ranker), Adafactor at a fine-tuning rate for every weight.
  opt = (optax.adafactor(lr) if spec.trainable_rules == freezing.FULL_FINETUNING_RULES
         else optimizers.prompt_tuning_adafactor(lr))
  if "step" not in compiled:
    compiled["step"] = jax.jit(step_lib.make_train_step(s.model, opt))
  step = compiled["step"]
  trainable, state = s.trainable, opt.init(s.trainable)
  rng = np.random.RandomState(seed)
  inputs, targets = data
  # The first step compiles, and the second may compile again (the optimizer state's
  # types settle after one update): time the steps after them.
  warm = 2 if steps > 2 else 1
  start = time.time()
  for i in range(steps):
    idx = rng.randint(0, len(inputs), batch_size)
    trainable, state, _ = step(trainable, state, s.frozen, batch(inputs[idx], targets[idx]),
                               jax.random.PRNGKey(i))
    if i == warm - 1:
      jax.block_until_ready(trainable)
      start = time.time()
  jax.block_until_ready(trainable)
  per_step = (time.time() - start) / max(steps - warm, 1)
  return s, trainable, per_step


def predict(s, trainable, inputs, decode, batch_size=16, compiled=None) -> list[str]:
  import jax
  from prompt_tuning import decoding
  from prompt_tuning.runtime import freezing
  compiled = {} if compiled is None else compiled
  params = freezing.merge(trainable, s.frozen)
  cfg = decoding.DecodingConfig(max_decode_length=TARGET_LENGTH, use_cache=False)
  if "generate" not in compiled:
    compiled["generate"] = jax.jit(lambda p, x: decoding.generate(s.model, p, x, cfg)[0])
  gen = compiled["generate"]
  out = []
  for i in range(0, len(inputs), batch_size):
    chunk = inputs[i:i + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), 0)])
    ids = np.asarray(gen(params, padded))[:len(chunk)]
    for row in ids:
      row = row.tolist()
      out.append(decode(row[:row.index(1)] if 1 in row else row))
  return out


def mean_sd(values):
  return dict(mean=float(np.mean(values)),
              sd=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
              values=[float(v) for v in values])


# --- the claims ------------------------------------------------------------------------

def compare(res, name_a, name_b, claim, control, expected_sign=1):
  """A claims-table row: name_a - name_b, across seeds (the verdict) and paired per
  example (McNemar over (question, seed) pairs, each seed against the same seed)."""
  from benchmarks.research import stats
  from benchmarks.research.runs import correct_vector
  a, b = res["methods"].get(name_a), res["methods"].get(name_b)
  if a is None or b is None:
    return stats.untestable(claim, control, f"{name_a if a is None else name_b} was not run")
  numbers = (f"{a['mean']:.1f} +- {a['sd']:.1f} vs {b['mean']:.1f} +- {b['sd']:.1f} "
             f"({len(a['values'])} vs {len(b['values'])} seeds, {res['test_questions']} test "
             "questions)")
  seeds = min(len(a["correct"]), len(b["correct"]))
  paired = stats.mcnemar(*(np.concatenate([correct_vector(x) for x in side["correct"][:seeds]])
                           for side in (a, b)))
  paired_text = (f"McNemar (paired per question and seed): {paired['effect']:+.1f} "
                 f"[{paired['ci'][0]:+.1f}, {paired['ci'][1]:+.1f}], p = {paired['p']:.3g}, "
                 f"discordant {paired['discordant'][0]} / {paired['discordant'][1]}")
  if len(a["values"]) < 5 or len(b["values"]) < 5:
    row = stats.untestable(claim, control, f"{min(len(a['values']), len(b['values']))} seeds "
                           "a side; the verdict rules ask for at least 5", numbers)
  else:
    row = stats.claim(claim, control, stats.permutation_test(a["values"], b["values"]),
                      expected_sign, numbers)
  row["paired"] = paired_text
  return row


def claims(res):
  return [
      compare(res, "frozen reader, re-ranked 5 of 20", "fine-tuned FiD reader k=5",
              CLAIM + ": the re-ranked frozen reader scores at least as high",
              "the fine-tuned FiD reader k=5"),
      compare(res, "frozen reader, re-ranked 5 of 20", "frozen reader k=5",
              "Levine 2022: re-ranking 20 candidates to 5 beats reading BM25's top 5",
              "the frozen reader k=5"),
      compare(res, "frozen reader k=5", "closed-book prompt tuning",
              "Levine 2022: a frozen reader beats closed-book prompt tuning on facts the "
              "backbone never saw", "closed-book prompt tuning"),
  ]


# --- the run -------------------------------------------------------------------------

def run(args, log=print):
  from benchmarks.research.runs import count_parameters
  from prompt_tuning.miniature import family as mini
  from prompt_tuning.tasks import dictionary_qa as dq
  from prompt_tuning.tasks import miniature as tasks_lib
  import sentencepiece as spm
  names = [n for n in METHODS if not args.methods or n in args.methods]
  for n in names:  # bad input first: one line, before any work
    mode = METHODS[n][0]
    if mode in dq.READERS:
      dq.check_reader(*dq.READERS[mode])
  corpus = tasks_lib.find()
  backbone = mini.require(args.size, mini.PretrainConfig())
  cfg = mini.backbone_config(args.size)
  from prompt_tuning.retrieval import dictionary_book
  book = dictionary_book.prepare(corpus, log=log)
  processor = spm.SentencePieceProcessor(model_file=corpus.spm_path)
  decode = lambda ids: processor.decode([i for i in ids if 2 < i < 8000])  # noqa: E731
  test_rows = book.questions("test")[:args.eval]
  gold = book.gold_positions("test")[:args.eval]
  res = dict(quick=args.quick, machine=machine.cpu_info(), size=args.size,
             backbone=os.path.basename(backbone), book=book.record(),
             settings=dict(steps=args.steps, batch_size=args.batch_size, seeds=args.seeds,
                           prompt_length=P, train_questions=args.train,
                           prompt_lr=args.prompt_lr, finetune_lr=args.finetune_lr),
             test_questions=len(test_rows),
             test_forms={f: sum(r["form"] == f for r in test_rows) for f in dq.FORMS},
             recall_at_k={str(k): v for k, v in dq.recall_at_k(
                 book.top("test")[:args.eval], gold, (1, 5, 20)).items()},
             methods={}, commands=[shlex.join(["python", "benchmarks/open_book.py", *args.argv])])
  answers = [r["answer"] for r in test_rows]
  train_rows = book.questions("train")[:args.train]
  train_targets = targets_of([r["answer"] for r in train_rows], processor.encode)
  cache = {}

  def data(mode, split):
    if (mode, split) not in cache:
      limit = args.train if split == "train" else args.eval
      cache[(mode, split)] = dq.reader_inputs(book, split, mode, processor.encode, limit)[0]
    return cache[(mode, split)]

  def sweep(kind, mode, rates):
    """The rate with the best validation exact match (seed 0, 400 questions)."""
    rows = book.questions("validation")[:400]
    inputs = dq.reader_inputs(book, "validation", mode, processor.encode, 400)[0]
    scores, compiled = {}, {}
    for lr in rates:
      compiled.pop("step", None)  # the rate is baked into the step
      s, trained, _ = train(spec_of(kind, mode, backbone, cfg),
                            (data(mode, "train"), train_targets), args.steps, args.batch_size,
                            0, lr, compiled)
      guess = predict(s, trained, inputs, decode, compiled=compiled)
      scores[lr] = 100.0 * float(np.mean([g == r["answer"] for g, r in zip(guess, rows)]))
      log(f"sweep {kind} {mode} lr={lr}: {scores[lr]:.1f}")
    return max(scores, key=scores.get), {str(k): v for k, v in scores.items()}

  if args.sweep:
    res["sweep"] = {}
    args.prompt_lr, res["sweep"]["prompt (frozen reader k=5)"] = sweep(
        "reader", "k5", (0.1, 0.3, 1.0))
    args.finetune_lr, res["sweep"]["fine-tuned FiD reader k=5"] = sweep(
        "finetune", "k5", (3e-4, 1e-3, 3e-3))
    res["settings"].update(prompt_lr=args.prompt_lr, finetune_lr=args.finetune_lr)

  for name in names:
    mode, kind = METHODS[name]
    lr = args.finetune_lr if kind == "finetune" else args.prompt_lr
    entry = res["methods"][name] = dict(mode=mode, kind=kind, values=[], correct=[],
                                        by_form={f: [] for f in dq.FORMS})
    compiled = {}
    for seed in range(args.seeds):
      t = time.time()
      s, trained, per_step = train(spec_of(kind, mode, backbone, cfg),
                                   (data(mode, "train"), train_targets), args.steps,
                                   args.batch_size, seed, lr, compiled)
      guess = predict(s, trained, data(mode, "test"), decode, compiled=compiled)
      right = [g == a for g, a in zip(guess, answers)]
      entry["values"].append(100.0 * float(np.mean(right)))
      entry["correct"].append("".join("1" if x else "0" for x in right))
      for f in dq.FORMS:
        sel = [x for x, r in zip(right, test_rows) if r["form"] == f]
        entry["by_form"][f].append(100.0 * float(np.mean(sel)) if sel else None)
      entry.update(trainable_parameters=count_parameters(trained), step_seconds=per_step)
      if seed == 0:
        entry["examples"] = [dict(question=r["question"], answer=r["answer"], said=g)
                             for r, g in list(zip(test_rows, guess))[:5]]
      log(f"{name} seed {seed}: {entry['values'][-1]:.1f} ({time.time() - t:.0f} s, "
          f"{per_step * 1000:.0f} ms/step)")
    entry.update({k: v for k, v in mean_sd(entry["values"]).items() if k != "values"})
    args.save(res)
  pt = res["methods"].get("closed-book prompt tuning")
  for entry in res["methods"].values():
    if pt:
      entry["step_time_vs_prompt_tuning"] = entry["step_seconds"] / pt["step_seconds"]
  res["claims"] = claims(res)
  args.save(res)
  return res


def markdown(res) -> str:
  from benchmarks.research import stats
  m, st = res["machine"], res["settings"]
  rec = res["recall_at_k"]
  forms = ", ".join(f"{v} {k}" for k, v in res["test_forms"].items())
  lines = [f"# Open-book QA over the dictionary: the frozen reader (miniature {res['size']})", "",
           "Made by " + ", then ".join(f"`{c}`" for c in res["commands"]) + ". "
           f"Machine: {machine.describe(m)}, load average at start {m['load_average'][0]:.1f} "
           "(shared machine).", "",
           f"Backbone `{res['backbone']}`, frozen except in the fine-tuned reader. Store: "
           f"{res['book']['passages']:,} passages ({res['book']['cut']:,} cut to "
           f"{res['book']['passage_tokens']} pieces). Test: the first {res['test_questions']} "
           f"questions of the test split ({forms}). "
           f"Training: {st['steps']} steps of Adafactor, batch {st['batch_size']}, from the first "
           f"{st['train_questions']} train questions; prompts of {st['prompt_length']} tokens at "
           f"rate {st['prompt_lr']}, the fine-tuned reader at {st['finetune_lr']}"
           + (f" (rates chosen on validation: {json.dumps(res['sweep'])})" if "sweep" in res
              else "") + ".", "",
           f"BM25 recall@1/5/20 on these test questions: {rec['1']:.1f} / {rec['5']:.1f} / "
           f"{rec['20']:.1f}%. No reader that reads BM25's top k can be right more often than "
           "recall@k on the word and etymology questions, apart from guessing.", "",
           "| method | exact match (mean +- sd) | pos | etymology | word | per seed | trainable "
           "params | step ms | vs prompt tuning |",
           "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
  for name, e in res["methods"].items():
    if "mean" not in e:
      continue
    forms = [np.mean([v for v in e["by_form"][f] if v is not None]) if any(
        v is not None for v in e["by_form"][f]) else float("nan") for f in ("pos", "etymology",
                                                                             "word")]
    ratio = e.get("step_time_vs_prompt_tuning")
    lines.append(f"| {name} | {e['mean']:.1f} +- {e['sd']:.1f} | {forms[0]:.1f} | "
                 f"{forms[1]:.1f} | {forms[2]:.1f} | "
                 f"{', '.join(f'{v:.1f}' for v in e['values'])} | {e['trainable_parameters']:,} | "
                 f"{1000 * e['step_seconds']:.0f} | "
                 + (f"{ratio:.1f}x" if ratio else "-") + " |")
  lines += ["", "## Claims", "", "| claim | control | verdict | effect [95% CI] (across seeds) "
            "| numbers | paired per question |", "| --- | --- | --- | --- | --- | --- |"]
  for c in res.get("claims", []):
    lines.append(f"| {c['claim']} | {c['control']} | {c['verdict']} | {stats.effect_text(c)} | "
                 f"{c['numbers']} | {c.get('paired', '-')} |")
  lines += ["", "A claim whose test finds no difference is *inconclusive*: with this many "
            "questions and seeds, a gap inside the interval cannot be ruled out.", ""]
  if res["quick"]:
    lines += ["Quick mode: too few steps, seeds and questions for any verdict; it shows the "
              "benchmark runs end to end.", ""]
  lines += [*(f"{r}\n" for r in res.get("remarks", [])),
            "## Answers of seed 0 (first five test questions)", ""]
  for name, e in res["methods"].items():
    if e.get("examples"):
      said = "; ".join(f"{x['question']} -> {x['said']!r} ({x['answer']})" for x in e["examples"])
      lines.append(f"- {name}: {said}")
  return "\n".join(lines) + "\n"


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--seeds", type=int, default=0, help="0: 5 (quick: 2)")
  parser.add_argument("--steps", type=int, default=0, help="0: 300 (quick: 4)")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--size", default=SIZE, choices=("xs", "s", "m", "l"),
                      help="the miniature backbone")
  parser.add_argument("--eval", type=int, default=0, help="test questions; 0: 500 (quick: 16)")
  parser.add_argument("--train", type=int, default=0, help="train questions; 0: 4000 (quick: 64)")
  parser.add_argument("--prompt_lr", type=float, default=0.3)
  parser.add_argument("--finetune_lr", type=float, default=1e-3)
  parser.add_argument("--sweep", action="store_true", help="choose both rates on validation first")
  parser.add_argument("--methods", default="", help="comma-separated names (default: all)")
  parser.add_argument("--out", default=None, help="folder (default: results/<machine>/)")
  report.add_machine_flag(parser, accelerator=False)
  args = parser.parse_args(argv)
  q = args.quick
  args.seeds = args.seeds or (2 if q else 5)
  args.steps = args.steps or (4 if q else 300)
  args.eval = args.eval or (16 if q else 500)
  args.train = args.train or (64 if q else 4000)
  args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in args.methods if m not in METHODS]
  if unknown:
    parser.error(f"unknown methods {unknown}; expected some of {list(METHODS)}")
  args.argv = argv
  out_dir = args.out or machine.results_dir(args.machine)
  name = "open_book" + ("_quick" if q else "")
  args.save = lambda res: report.write(name, res, out_dir=out_dir)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return run(args, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
  main()
