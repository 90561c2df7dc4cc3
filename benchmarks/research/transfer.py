"""ATTEMPT and SPoT with real source prompts on the miniature (issue 35 point 4).

    python -m benchmarks.research.transfer           # transfer_miniature.{json,md}
    python -m benchmarks.research.transfer --quick   # xs, a few steps, two seeds: structure only

Source prompts: plain prompt tuning (P tokens, Adam, one rate, seeds 100-103) on
four of the miniature's tasks, each exported as a `.npy` and listed in a
SPoT library (`prompts/spot.py`): part of speech (definition -> noun / verb
/ adjective / adverb), etymology (headword -> language), headword
(definition -> the word, generation) and the two-step definition ->
etymology language. The held-out target, `miniature_binary` (definition ->
noun / verb, balanced: chance 50%), is none of them; part of speech is its
related task (its labels are a superset), as MNLI is RTE's in the papers.

On the target, every method trains P tokens with Adam over the same rate
sweep, steps, batch and data order per seed, its rate picked on the first
seed's validation score, and is scored on one shared test set:

  - prompt tuning from scratch (sampled-vocabulary init): the control;
  - SPoT (Vu et al. 2022), retrieved: a probe prompt (prompt tuning from
    scratch, `probe_steps` steps, the paper's early-checkpoint task
    embedding) ranks the library by cosine of average tokens
    (`spot.rank`), and the top source initializes prompt tuning; per seed,
    since each seed's probe differs;
  - SPoT with the best source by exhaustive transfer: every source is tried
    as the init on the first seed (each over the rate sweep), the best by
    validation is kept and run on the other seeds;
  - ATTEMPT (Asai et al. 2022) over the four sources at temperatures
    T = d*e (the paper's), sqrt(d) and 1 (`attempt.TEMPERATURES`), with
    the mean entropy of its attention over the test inputs at every kept
    checkpoint (`attempt.attention_entropy`; log(S+1) is uniform).

"Does SPoT retrieve the exhaustive best?" is reported per seed as a fact
with the retrieved source's rank among the exhaustive ones. The claims are
tested per example and across seeds at once (`idpt.seed_example_bootstrap`,
95% intervals), with the research suite's verdict words and chance gate.

The full run (`FULL`, not yet run): size l (width 192: T = d*e 521.9,
sqrt(d) 13.9, 1), 300 steps at batch 16 for sources and target alike, rates
(0.01, 0.1), 5 seeds, a shared test set of 400 examples, probes of 30
steps: at most 49 runs (4 sources; 8 methods x 2 rates on the first seed;
5 probes; 6 methods on each of 4 more seeds, fewer where SPoT retrieves the
exhaustive best, whose run is then cached). Its time, estimated on this
2-core machine: the quick run (xs, 2-4 steps) took 45-50 CPU-seconds for 21
runs, about 2 s of fixed cost a run (input pipeline, checkpoints,
compiling and scoring), and its step times are that overhead, not the
step's; cost_miniature.md gives l's step (prompt tuning 174 ms at batch
16 on the quiet machine, ATTEMPT 1.10x), so a run's 300 steps take about
55 s, and with scoring (2 x 128 validation and 400 test examples by rank
classification, greedy decoding for the headword source) about 1.5 minutes:
about 75 minutes quiet, and 2.5 hours at the load average of 4-5 that two
helpers make (recursion.py's m runs took twice their quiet time then).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.research import experiments_family, idpt
# pylint: disable=protected-access  (idpt's row helpers serve this experiment too)
from benchmarks.research.config import Suite
from benchmarks.research.runs import Method

NAME = "transfer_miniature"
TARGET = "miniature_binary"
SCRATCH = "prompt tuning from scratch"
FROM = "prompt tuning from source"        # f"{FROM} {source}": exhaustive transfer's runs
SPOT = "SPoT, retrieved source"
EXHAUSTIVE = "SPoT, best source by exhaustive transfer"
ATTEMPT = "ATTEMPT"                       # f"{ATTEMPT}, T = {name}"
CHANCE = 50.0  # noun / verb, balanced
ENTROPY_FILE = "attention_entropy.json"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one run of the experiment trains and scores (the module docstring has the
  full run's cost). One rate for the sources (0.1, the rate the ID-PT and
  recursion sweeps picked for prompts on the miniature); the target's methods
  sweep `rates`, since a transferred init may want a gentler rate than a
  random one."""
  size: str = "l"
  steps: int = 300
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  rates: tuple[float, ...] = (1e-2, 1e-1)
  batch_size: int = 16
  evaluations: int = 2
  eval_examples: int = 128     # validation
  test_examples: int = 400     # the shared test set (of the target's 854)
  prompt_length: int = 10      # P: every source, probe and target prompt
  source_steps: int = 300
  source_rate: float = 0.1
  # Source i trains with seed source_seed + i: its init and data order share nothing
  # with the target's seeds, so a probe is not like a source for starting where it did.
  source_seed: int = 100
  probe_steps: int = 30
  sources: tuple[str, ...] = ("pos", "etymology", "headword", "definition_etymology")
  temperatures: tuple[str, ...] = ("d*e", "sqrt(d)", "1")

  def suite(self) -> Suite:
    return Suite(seeds=self.seeds, steps=self.steps, batch_size=self.batch_size,
                 evaluations=self.evaluations, eval_examples=self.eval_examples,
                 test_examples=self.test_examples)


FULL = Settings()
QUICK = Settings(size="xs", steps=2, seeds=(0, 1), rates=(1e-1,), batch_size=4, evaluations=1,
                 eval_examples=4, test_examples=8, source_steps=2, probe_steps=1)


def source_task(source: str) -> str:
  return f"miniature_{source}"


def attempt_name(temperature: str) -> str:
  return f"{ATTEMPT}, T = {temperature}"


def class_labels() -> dict[str, tuple[str, ...]]:
  """The rank classifier's labels by task; the headword source decodes."""
  from prompt_tuning.tasks import gcide
  return {source_task(t): tuple(labels) for t, labels in gcide.LABELS.items()}


def _run(method: Method, task: str, bb, seed: int, settings: Settings, work_dir: str,
         steps: Optional[int] = None) -> dict[str, Any]:
  """One run's result (with its folder); a run whose loss went non-finite is a row saying so."""
  from prompt_tuning.tasks import miniature as tasks_lib
  from prompt_tuning.train.loop import NonFiniteLossError
  from benchmarks.research.runs import run
  try:
    return run(method, task, bb, seed, settings.suite(), work_dir, steps=steps,
               feature_lengths=dict(tasks_lib.FEATURE_LENGTHS), class_labels=class_labels())
  except NonFiniteLossError as e:
    return dict(method=method.name, task=task, seed=seed, learning_rate=method.learning_rate,
                failed=str(e).split(";")[0], validation_score=-math.inf)


def _row(r: dict[str, Any], **extra: Any) -> dict[str, Any]:
  return {**idpt._row(r), **{k: r[k] for k in ("task", "attention_entropy", "entropy_by_step")
                             if k in r}, **extra}


def scratch(settings: Settings, frequent_ids) -> Method:
  from benchmarks.research.methods import family_prompt
  p = settings.prompt_length
  m = family_prompt(p, "sampled_vocab", frequent_ids, 5000)
  return dataclasses.replace(m, name=f"{SCRATCH} ({p} tokens)", optimizer="adam")


def from_source(name: str, prompt_file: str) -> Method:
  """Prompt tuning (Adam) started from a source's prompt: SPoT's transfer."""
  from benchmarks.research.methods import fixed_prompt
  value = np.load(prompt_file)
  m = fixed_prompt(f"{FROM} {name} ({value.shape[0]} tokens)", value)
  return dataclasses.replace(m, optimizer="adam")


def attempt_method(temperature: str, files: Sequence[str], width: int, frequent_ids) -> Method:
  """ATTEMPT over the source files at the named temperature; its target prompt starts
  as sampled vocabulary, as prompt tuning from scratch does."""
  from prompt_tuning.prompts import attempt
  from benchmarks.research.methods import _digest, sampled_top
  value = attempt.temperature_of(temperature, width)
  length = int(np.load(files[0]).shape[0])

  def build(path: str, seed: int):
    return attempt.AttemptPrompt(tuple(files), temperature=value,
                                 init=sampled_top(path, np.asarray(frequent_ids())[:5000], seed))
  return Method(f"{attempt_name(temperature)} ({length} tokens, {len(files)} sources)", build,
                optimizer="adam", settings=(*(_digest(f) for f in files), f"T={value!r}"))


def attention_entropies(method: Method, bb, run_dir: str, task: str, examples: int
                        ) -> list[list[float]]:
  """[step, mean attention entropy (nats) over the first `examples` test inputs] for
  each kept checkpoint of an ATTEMPT run: the attention as training went; cached
  in the run folder."""
  path = os.path.join(run_dir, ENTROPY_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  import jax.numpy as jnp
  from prompt_tuning.prompts import attempt, base, initializers
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  from prompt_tuning.runtime import data as data_lib
  from prompt_tuning.runtime import setup as setup_lib
  from prompt_tuning.runtime.specs import ModelSpec
  from prompt_tuning.tasks import miniature as tasks_lib
  from benchmarks.research import runs
  lengths = dict(tasks_lib.FEATURE_LENGTHS)
  module = base.for_model(method.prompt(bb.path, 0), bb.config)
  abstract = setup_lib.abstract(ModelSpec(bb.config, bb.path, module))
  tokens = data_lib.pad_batch(list(runs._examples(task, "test", examples,
                                                  tuple(sorted(lengths.items())))),
                              "inputs", lengths["inputs"])
  embedded = jnp.asarray(initializers.load_embeddings(bb.path)[tokens])
  store = checkpoints_lib.CheckpointStore(run_dir)
  out = []
  for step in store.all_steps():
    trained = store.restore_trainable(abstract.trainable, step=step)
    weights, _, _ = module.apply({"params": trained["encoder_prompt"]}, embedded,
                                 jnp.asarray(tokens > 0), method=module.attention)
    out.append([int(step), float(attempt.attention_entropy(weights))])
  store.close()
  with open(path + ".tmp", "w") as f:
    json.dump(out, f)
  os.replace(path + ".tmp", path)
  return out


def _library(work_dir: str, files: dict[str, str]) -> str:
  """The SPoT library of the sources (a folder per set of source prompts)."""
  from prompt_tuning.prompts import spot
  from benchmarks.research.methods import _digest
  key = hashlib.sha256("".join(_digest(f) for f in files.values()).encode()).hexdigest()[:12]
  library = os.path.join(work_dir, f"spot_library_{key}")
  for name, file in files.items():
    spot.add_source(library, name, source_task(name), file, overwrite=True)
  return library


def run_all(settings: Settings, work_dir: str, save=lambda result: None,
            log=print) -> dict[str, Any]:
  """The sources, then each target method's sweep on the first seed, then the other
  seeds one by one (every method of a seed before the next); `save(partial
  result)` after each run."""
  from benchmarks.research import family as family_lib
  from prompt_tuning import miniature
  from prompt_tuning.miniature import family as mini
  from prompt_tuning.prompts import spot
  corpus = miniature.corpus()
  path = mini.require(settings.size, mini.PretrainConfig())
  config = mini.backbone_config(settings.size)
  bb = family_lib.Backbone(settings.size, path, config, corpus.vocabulary(), 0)
  frequent = lambda: corpus.frequent_ids(10 ** 9)  # noqa: E731
  out: dict[str, Any] = dict(settings=dataclasses.asdict(settings), backbone=path,
                             width=config.emb_dim, target=TARGET, sources=[], sweeps={},
                             rows=[], retrieval=[], partial=True)
  start = time.time()

  def record(row: dict[str, Any]) -> None:
    out["rows"].append(row)
    log(f"{row['method']} seed {row['seed']} rate {row['learning_rate']:g}: "
        f"{row.get('score', row.get('failed'))} ({time.time() - start:.0f} s)")
    save(out)

  # The sources: one prompt per task, one rate, each its own seed.
  source_method = dataclasses.replace(scratch(settings, frequent), name=f"source prompt "
                                      f"({settings.prompt_length} tokens)")
  files = {}
  for i, name in enumerate(settings.sources):
    r = _run(source_method.with_rate(settings.source_rate), source_task(name), bb,
             settings.source_seed + i, settings, work_dir, steps=settings.source_steps)
    if "failed" in r:
      raise RuntimeError(f"The {name} source prompt did not train: {r['failed']}; lower "
                         "Settings.source_rate")
    files[name] = os.path.join(r["run_dir"], "prompt.npy")
    out["sources"].append(dict(name=name, task=source_task(name), seed=r["seed"],
                               score=r["score"],
                               steps=r["steps"], learning_rate=r["learning_rate"],
                               chance=(100.0 / len(class_labels()[source_task(name)])
                                       if source_task(name) in class_labels() else None)))
    log(f"source {name}: {r['score']:.1f} ({time.time() - start:.0f} s)")
  library = _library(work_dir, files)

  def one(method: Method, seed: int, **extra: Any) -> dict[str, Any]:
    r = _run(method, TARGET, bb, seed, settings, work_dir)
    if method.name.startswith(ATTEMPT) and "failed" not in r:
      r["entropy_by_step"] = attention_entropies(method, bb, r["run_dir"], TARGET,
                                                 settings.test_examples)
      r["attention_entropy"] = dict(map(tuple, r["entropy_by_step"]))[r["selected_step"]]
    return _row(r, **extra)

  def sweep(method: Method) -> dict[str, Any]:
    best, out["sweeps"][method.name] = idpt.pick_rate(
        [one(method.with_rate(rate), settings.seeds[0]) for rate in settings.rates], TARGET)
    return best

  def rate_of(method: Method) -> Method:
    return method.with_rate(out["sweeps"][method.name]["selected"])

  base = scratch(settings, frequent)
  transfers = {name: from_source(name, file) for name, file in files.items()}
  attempts = [attempt_method(t, list(files.values()), config.emb_dim, frequent)
              for t in settings.temperatures]
  record(sweep(base))
  first = {name: sweep(m) for name, m in transfers.items()}
  for name, row in first.items():
    record(dict(row, source=name))
  # Exhaustive transfer: the source whose init did best on validation (the first on a tie).
  order = sorted(first, key=lambda n: (-first[n]["validation_score"],
                                       list(settings.sources).index(n)))
  out["exhaustive_order"] = order
  best = order[0]

  def spot_row(seed: int) -> None:
    probe = _run(rate_of(base), TARGET, bb, seed, settings, work_dir, steps=settings.probe_steps)
    ranked = spot.rank(library, os.path.join(probe["run_dir"], "prompt.npy"))
    retrieved = ranked[0][0].name
    out["retrieval"].append(dict(
        seed=seed, probe_steps=settings.probe_steps, retrieved=retrieved, exhaustive_best=best,
        rank=order.index(retrieved) + 1, ranking=[[s.name, round(c, 6)] for s, c in ranked]))
    record(dict(one(rate_of(transfers[retrieved]), seed, source=retrieved), method=SPOT))

  record(dict(first[best], method=EXHAUSTIVE, source=best))
  spot_row(settings.seeds[0])
  for m in attempts:
    record(sweep(m))
  for seed in settings.seeds[1:]:  # seed by seed, so that a cut run stays balanced
    record(one(rate_of(base), seed))
    record(dict(one(rate_of(transfers[best]), seed, source=best), method=EXHAUSTIVE))
    spot_row(seed)
    for m in attempts:
      record(one(rate_of(m), seed))
  out["partial"] = False
  out["seconds"] = time.time() - start
  return out


def claim_list(settings: dict[str, Any]) -> list[tuple[str, str, str]]:
  """(the better side, the control, the claim) for each claim tested."""
  temps = settings["temperatures"]
  out = [(SPOT, SCRATCH, "Vu 2022: SPoT (the source a probe prompt retrieves) beats prompt "
                         "tuning from scratch"),
         (EXHAUSTIVE, SCRATCH, "Vu 2022: transfer from the best source (exhaustive search) "
                               "beats prompt tuning from scratch")]
  out += [(attempt_name(t), SCRATCH, f"Asai 2022: ATTEMPT (T = {t}) beats prompt tuning from "
                                     "scratch") for t in temps]
  if "d*e" in temps:
    out += [(attempt_name("d*e"), attempt_name(t), f"Asai 2022: ATTEMPT's temperature d*e beats "
                                                   f"T = {t}") for t in temps if t != "d*e"]
  return out


def claims(result: dict[str, Any]) -> list[dict[str, Any]]:
  """Each claim of `claim_list`, per example and seed on the shared test set."""
  return idpt.claims_of_pairs(result, claim_list(result["settings"]),
                              " (miniature, held-out target: definition -> noun / verb)", CHANCE)


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
  """Per method compared on every seed: its rate(s), score, runs above chance, attention
  entropy (ATTEMPT), parameters and step time against prompt tuning from scratch."""
  by = idpt.by_method(result)
  _, base_rows = idpt.named(by, SCRATCH)
  names = [idpt.named(by, SCRATCH)[0], EXHAUSTIVE, SPOT] + [
      idpt.named(by, attempt_name(t))[0] for t in result["settings"]["temperatures"]]
  out = []
  for name in names:
    rows = by.get(name, [])
    row = dict(method=name, seeds=len(rows),
               rates=sorted({r["learning_rate"] for r in rows}),
               sources=sorted({r["source"] for r in rows if "source" in r}))
    if rows:
      entropies = [r["attention_entropy"] for r in rows if "attention_entropy" in r]
      row.update(score=idpt._mean_sd(rows),
                 above_chance=sum(experiments_family.learned(r, CHANCE) for r in rows),
                 attention_entropy=float(np.mean(entropies)) if entropies else None,
                 **idpt.cost_against(rows, base_rows))
    out.append(row)
  return out


def _fmt(x, f: str) -> str:
  return "-" if x is None else format(x, f)


def markdown(result: dict[str, Any]) -> str:
  s = result["settings"]
  quick = s["size"] == "xs"
  n_sources = len(result["sources"])
  lines = [
      "# ATTEMPT and SPoT with real source prompts (Asai et al. 2022, Vu et al. 2022; "
      "issue 35)", "",
      f"Written by `python -m benchmarks.research.transfer{' --quick' if quick else ''}` on "
      f"{result.get('machine_text', 'an unrecorded machine')}. Backbone: miniature {s['size']} "
      f"(frozen, width {result['width']}). Sources: {s['prompt_length']}-token prompts trained "
      f"{s['source_steps']} steps (Adam, rate {s['source_rate']:g}, seeds from "
      f"{s['source_seed']}, none a target seed) on "
      f"{', '.join(x['task'] for x in result['sources'])}. Target (held out): {result['target']} "
      f"(definition -> noun / verb, balanced, chance 50%). {s['steps']} steps, batch "
      f"{s['batch_size']}, Adam for every method, rates {s['rates']} (picked on seed "
      f"{s['seeds'][0]}'s validation score, {s['eval_examples']} examples); seeds {s['seeds']}; "
      f"scores: rank-classification accuracy (%) on one shared test set of "
      f"{s['test_examples']} examples, mean +- sd over seeds. SPoT's probe: prompt tuning from "
      f"scratch for {s['probe_steps']} steps, cosine of average tokens.", "",
      *idpt.claims_section(result, CHANCE)]
  lines += ["", "## Methods", "", "| method | rate | source | test score | runs above chance "
            f"| attention entropy (nats; uniform {math.log(n_sources + 1):.3f}) | trainable "
            "parameters | x prompt tuning | step time x prompt tuning |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for m in result["methods"]:
    rates = ", ".join(f"{r:g}" for r in m["rates"]) or "-"
    sources = ", ".join(m["sources"]) or "-"
    if not m["seeds"]:
      lines.append(f"| {m['method']} | {rates} | {sources} | no finished run | | | | | |")
      continue
    lines.append(f"| {m['method']} | {rates} | {sources} | {m['score']} | {m['above_chance']} "
                 f"of {m['seeds']} | {_fmt(m['attention_entropy'], '.3f')} | "
                 f"{m['parameters']:,} | {_fmt(m['parameters_x'], '.1f')} | "
                 f"{_fmt(m['step_time_x'], '.2f')} |")
  lines += ["", "## Does SPoT retrieve the best source?", "",
            f"Exhaustive transfer: each source as the init on seed {s['seeds'][0]}, ranked by "
            "validation score: " + ", ".join(
                f"{i}. {n}" for i, n in enumerate(result.get("exhaustive_order", []), 1)) + ".",
            "", "| seed | retrieved source | its rank by exhaustive transfer | exhaustive best "
            "| same | cosine with the probe, by source |", "| --- | --- | --- | --- | --- | --- |"]
  for r in result["retrieval"]:
    cosines = ", ".join(f"{n} {c:+.3f}" for n, c in r["ranking"])
    lines.append(f"| {r['seed']} | {r['retrieved']} | {r['rank']} of {n_sources} | "
                 f"{r['exhaustive_best']} | {'yes' if r['rank'] == 1 else 'no'} | {cosines} |")
  same = sum(r["rank"] == 1 for r in result["retrieval"])
  lines += ["", f"SPoT retrieved the exhaustive best on {same} of {len(result['retrieval'])} "
            "seeds (a fact about this run, not a test).", "", "## Sources", "",
            "| source | task | its own test score | chance | init on the target: validation "
            f"(seed {s['seeds'][0]}) | test |", "| --- | --- | --- | --- | --- | --- |"]
  first = {r["source"]: r for r in result["rows"]
           if r["method"].startswith(FROM) and "source" in r}
  for src in result["sources"]:
    r = first.get(src["name"], {})
    lines.append(f"| {src['name']} | {src['task']} | {src['score']:.1f} | "
                 f"{_fmt(src['chance'], '.0f')} | {_fmt(r.get('validation_score'), '.1f')} | "
                 f"{_fmt(r.get('score'), '.1f')} |")
  lines += ["", "ATTEMPT's attention entropy, per run and checkpoint (step: nats):", ""]
  for r in result["rows"]:
    if "entropy_by_step" in r:
      lines.append(f"- {r['method']}, seed {r['seed']}, rate {r['learning_rate']:g}: " + ", ".join(
          f"{int(step)}: {e:.3f}" for step, e in r["entropy_by_step"]))
  lines += ["", "Step time: the median over a method's runs of the step rate in its last "
            "logging window (compilation excluded), relative to the same median of prompt "
            "tuning from scratch; the machine's cores were shared with other work, so read it "
            "to about +-20%. The headword source is scored by exact match of greedy decoding "
            "(chance: -).", ""]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  return idpt.experiment_main(argv, "benchmarks.research.transfer", __doc__.split("\n\n")[0],
                              NAME, FULL, QUICK, run_all,
                              lambda result: idpt.finished(result, claims, summary))


if __name__ == "__main__":
  main()
