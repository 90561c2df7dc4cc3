"""Recursion (Levine et al. 2022, sec. 5) on a two-step dictionary task (issue 35).

    python -m benchmarks.research.recursion           # recursion_miniature.{json,md}
    python -m benchmarks.research.recursion --quick   # xs, a few steps, one seed: structure only

The task (`miniature_definition_etymology`): a held-out entry's definition ->
the language its word comes from (Latin, French, Anglo-Saxon or Greek,
balanced: chance 25%). Step 1 is the headword task (definition -> word),
step 2 the etymology task (word -> language). Every method:

  - one pass: a soft prompt of P tokens on the task;
  - textual recursion (`TextualRecursionT5`), the paper's two stages: pass 1's
    prompt is trained on step 1 (`miniature_headword`), then prompt 2 is
    trained on the input followed by pass 1's greedy answer, prompt 1 frozen;
  - neural recursion (`NeuralRecursionT5`): prompt 1 and the connector,
    trained together through both passes;
  - the equal-budget control: one pass with ceil(connector parameters / H)
    tokens, as many trainable numbers as the connector holds;
  - step 2 alone: one pass of P tokens, and one of the equal-budget length, on
    the same entries with the headword as input
    (`miniature_definition_etymology_headword`): the control that the task is
    two-step in fact, i.e. that the language is read from the word better
    than from its definition by the same prompt.

Every method trains with Adam over the same rate sweep, steps, batch and data
order per seed, its rate picked on the first seed's validation score, and
is scored on one shared test set. The claims are tested per example and
across seeds at once (`idpt.seed_example_bootstrap`), with the research
suite's verdict words and chance gate.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.research import experiments_family, idpt
# pylint: disable=protected-access  (idpt's run and row helpers serve this experiment too)
from benchmarks.research.config import Suite
from benchmarks.research.runs import Method, count_parameters

NAME = "recursion_miniature"
TASK = "miniature_definition_etymology"
STEP2_TASK = "miniature_definition_etymology_headword"
STEP1_TASK = "miniature_headword"
ONE_PASS, EQUAL = "one pass", "one pass, the connector's parameters"
TEXTUAL, NEURAL = "textual recursion", "neural recursion"
STEP1, STEP2 = "textual pass 1 alone (definition -> headword)", "step 2 alone (headword input)"
STEP2_EQUAL = STEP2 + ", the connector's parameters"
CHANCE = 25.0  # 4 balanced languages


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one run of the experiment trains and scores.

  The connector is small (width 16) so that the equal-budget prompt stays
  affordable: its parameters (8,464 on m) make an 89-token prompt there, while
  a width-64 connector (95,296) would need a 993-token one. One rate, 0.1:
  the ID-PT experiment's sweep on the same backbone picked it for every
  method that learned (idpt_miniature.md), and a second rate would double
  the sweep on two shared cores; pass `rates` to sweep. Batch 16, not the ID-PT
  run's 32: on m under the load of the day (load average about 5) one 10-token
  run of 300 steps at batch 32 took 135 s of training, and the heavier methods
  (an 89-token prompt, two passes) would have taken the 30 runs to about two
  hours; halving the batch keeps the 300 updates (the 10-token prompts stayed
  at chance at 150 steps in the ID-PT run) within the hour.
  """
  size: str = "m"
  steps: int = 300
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  rates: tuple[float, ...] = (0.1,)
  batch_size: int = 16
  evaluations: int = 2
  eval_examples: int = 128     # validation
  test_examples: int = 180     # the whole test split of the task (45 per language)
  prompt_length: int = 10      # P: one pass, both passes of recursion, step 2 alone
  answer_length: int = 6       # pass 1's greedy headword (pieces)
  connector: tuple[tuple[str, int], ...] = (("connector_width", 16), ("connector_layers", 1),
                                            ("query_layers", 1), ("num_heads", 4),
                                            ("mlp_dim", 32))

  def suite(self) -> Suite:
    return Suite(seeds=self.seeds, steps=self.steps, batch_size=self.batch_size,
                 evaluations=self.evaluations, eval_examples=self.eval_examples,
                 test_examples=self.test_examples)


FULL = Settings()
QUICK = Settings(size="xs", steps=4, seeds=(0,), batch_size=32, evaluations=1, eval_examples=8,
                 test_examples=16, answer_length=3,
                 connector=(("connector_width", 8), ("connector_layers", 1), ("query_layers", 1),
                            ("num_heads", 2), ("mlp_dim", 16)))


def _neural_prompt(settings: Settings, first_init=None):
  from prompt_tuning.prompts import recursive
  init = {} if first_init is None else dict(first_init=first_init)
  return recursive.RecursionPrompts(settings.prompt_length, neural=True, **init,
                                    **dict(settings.connector))


def connector_parameters(settings: Settings, config) -> int:
  """The connector's trainable numbers on a backbone of `config` (abstract: nothing runs)."""
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.prompts import base, recursive
  module = base.for_model(_neural_prompt(settings), config)
  abstract = params_lib.abstract_params(recursive.NeuralRecursionT5(config, encoder_prompt=module))
  return count_parameters(abstract[0]["encoder_prompt"]["connector"])


def equal_length(settings: Settings, config) -> int:
  """The equal-budget prompt's tokens: ceil(connector parameters / width)."""
  return math.ceil(connector_parameters(settings, config) / config.emb_dim)


def methods(settings: Settings, config, frequent_ids) -> list[tuple[Method, str]]:
  """(method, its task) for every method but textual recursion's stage 2, which
  needs stage 1's prompt (`textual`); all train with Adam."""
  from prompt_tuning.prompts import recursive
  from benchmarks.research.methods import family_prompt, sampled_top
  p = settings.prompt_length

  def prompt(name: str, length: int) -> Method:
    m = family_prompt(length, "sampled_vocab", frequent_ids, 5000)
    return dataclasses.replace(m, name=f"{name} ({length} tokens)", optimizer="adam")
  neural = Method(f"{NEURAL} ({p} + {p} tokens)", lambda path, seed: _neural_prompt(
      settings, sampled_top(path, np.asarray(frequent_ids())[:5000], seed)),
                  optimizer="adam", model_class=recursive.NeuralRecursionT5,
                  settings=(f"{dict(settings.connector)}",))
  equal = equal_length(settings, config)
  return [(prompt(ONE_PASS, p), TASK), (prompt(STEP2, p), STEP2_TASK),
          (prompt(EQUAL, equal), TASK), (neural, TASK),
          (prompt(STEP1, p), STEP1_TASK), (prompt(STEP2_EQUAL, equal), STEP2_TASK)]


def textual(settings: Settings, first_prompt: str, frequent_ids) -> Method:
  """Stage 2: prompt 2 on input + pass 1's answer, prompt 1 read from stage 1's
  `first_prompt` (.npy) and frozen."""
  import functools
  from prompt_tuning.prompts import initializers, recursive
  from benchmarks.research.family import fingerprint
  from benchmarks.research.methods import sampled_top
  p, first = settings.prompt_length, np.load(first_prompt)

  def build(path: str, seed: int):
    return recursive.RecursionPrompts(
        p, first_init=initializers.from_array(first), freeze_first=True,
        second_init=sampled_top(path, np.asarray(frequent_ids())[:5000], seed))
  return Method(f"{TEXTUAL} ({p} + {p} tokens)", build, optimizer="adam",
                model_class=functools.partial(recursive.TextualRecursionT5,
                                              answer_length=settings.answer_length, train_pass=2),
                settings=(fingerprint(first_prompt), f"answer_length={settings.answer_length}"))


def class_labels() -> dict[str, tuple[str, ...]]:
  from prompt_tuning.tasks import gcide
  return {TASK: gcide.LABELS[gcide.TWO_STEP], STEP2_TASK: gcide.LABELS[gcide.TWO_STEP_HEADWORD]}


def _one(method: Method, task: str, bb, seed: int, settings: Settings, work_dir: str):
  """One run's row, with its folder (stage 1's prompt is read from it)."""
  r = idpt._one(method, task, bb, seed, settings, work_dir, labels=class_labels())
  return {**idpt._row(r), **({"run_dir": r["run_dir"]} if "run_dir" in r else {})}


def run_all(settings: Settings, work_dir: str, save=lambda result: None,
            log=print) -> dict[str, Any]:
  """Each method's sweep on the first seed, then the other seeds one by one (every
  method of a seed before the next seed); `save(partial result)` after each run."""
  from benchmarks.research import family as family_lib
  from prompt_tuning import miniature
  from prompt_tuning.miniature import family as mini
  corpus = miniature.corpus()
  path = mini.require(settings.size, mini.PretrainConfig())
  config = mini.backbone_config(settings.size)
  bb = family_lib.Backbone(settings.size, path, config, corpus.vocabulary(), 0)
  frequent = lambda: corpus.frequent_ids(10 ** 9)  # noqa: E731
  plan = methods(settings, config, frequent)
  out: dict[str, Any] = dict(settings=dataclasses.asdict(settings), backbone=path,
                             connector_parameters=connector_parameters(settings, config),
                             width=config.emb_dim, sweeps={}, rows=[], partial=True)
  start = time.time()
  stage1: dict[int, str] = {}  # seed -> stage 1's prompt.npy

  def record(row: dict[str, Any]) -> None:
    if row["method"].startswith(STEP1) and "failed" not in row:
      stage1[row["seed"]] = os.path.join(row["run_dir"], "prompt.npy")
    out["rows"].append({k: v for k, v in row.items() if k != "run_dir"})
    log(f"{row['method']} seed {row['seed']} rate {row['learning_rate']:g}: "
        f"{row.get('score', row.get('failed'))} ({time.time() - start:.0f} s)")
    save(out)

  def sweep(method: Method, task: str) -> None:
    best, out["sweeps"][method.name] = idpt.pick_rate(
        [_one(method.with_rate(r), task, bb, settings.seeds[0], settings, work_dir)
         for r in settings.rates], task)
    record(best)

  def textual_for(seed: int) -> Optional[Method]:
    return textual(settings, stage1[seed], frequent) if seed in stage1 else None
  for method, task in plan:
    sweep(method, task)
  if first := textual_for(settings.seeds[0]):
    sweep(first, TASK)
  for seed in settings.seeds[1:]:  # seed by seed, so that a cut run stays balanced
    for method, task in plan:
      record(_one(method.with_rate(out["sweeps"][method.name]["selected"]), task, bb, seed,
                  settings, work_dir))
    second = textual_for(seed)
    if second and second.name in out["sweeps"]:
      record(_one(second.with_rate(out["sweeps"][second.name]["selected"]), TASK, bb, seed,
                  settings, work_dir))
  out["partial"] = False
  out["seconds"] = time.time() - start
  return out


CLAIMS = (  # (the better side, the control, the claim)
    (NEURAL, ONE_PASS, "Levine 2022: neural recursion beats one pass with a prompt"),
    (NEURAL, EQUAL, "Levine 2022: neural recursion beats one pass at the connector's budget"),
    (TEXTUAL, ONE_PASS, "Levine 2022: textual recursion beats one pass with a prompt"),
    (STEP2, ONE_PASS, "The task is two-step: the language is read from the headword better "
                      "than from its definition"),
    (STEP2_EQUAL, EQUAL, "The task is two-step: the language is read from the headword better "
                         "than from its definition, at the connector's budget"),
)


def claims(result: dict[str, Any]) -> list[dict[str, Any]]:
  """Each claim of `CLAIMS`, per example and seed on the shared test set."""
  return idpt.claims_of_pairs(result, CLAIMS,
                              " (miniature, definition -> etymology language)", CHANCE)


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
  """Per method: task, rate, score, runs above chance, parameters and step time,
  both relative to one pass (prompt tuning)."""
  by = idpt.by_method(result)
  _, base_rows = idpt.named(by, ONE_PASS)
  out = []
  for name, sweep in result["sweeps"].items():
    rows = by.get(name, [])
    row = dict(method=name, task=sweep["task"], rate=sweep["selected"], seeds=len(rows))
    if rows:
      row.update(score=idpt._mean_sd(rows),
                 above_chance=(sum(experiments_family.learned(r, CHANCE) for r in rows)
                               if sweep["task"] != STEP1_TASK else None),
                 **idpt.cost_against(rows, base_rows))
    out.append(row)
  return out


def markdown(result: dict[str, Any]) -> str:
  s = result["settings"]
  fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
  lines = [
      "# Recursion on a two-step dictionary task (Levine et al. 2022, issue 35)", "",
      f"Written by `python -m benchmarks.research.recursion"
      f"{' --quick' if s['size'] == 'xs' else ''}` on "
      f"{result.get('machine_text', 'an unrecorded machine')}. Backbone: miniature "
      f"{s['size']} (frozen, width {result['width']}). Task: a held-out entry's definition -> "
      f"the language of the word it defines (4 balanced languages, chance 25%). {s['steps']} "
      f"steps, batch {s['batch_size']}, Adam for every method, rates {s['rates']} (picked on "
      f"seed {s['seeds'][0]}'s validation score, {s['eval_examples']} examples); seeds "
      f"{s['seeds']}; scores: rank-classification accuracy (%) on one shared test set of "
      f"{s['test_examples']} examples, mean +- sd over seeds (pass 1 alone: exact match of the "
      f"headword). Connector: {dict(s['connector'])}, {result['connector_parameters']:,} "
      f"parameters; pass 1's answer: at most {s['answer_length']} pieces.", "",
      *idpt.claims_section(result)]
  lines += ["", "## Methods", "", "| method | task | rate | test score | runs above chance | "
            "trainable parameters | x prompt tuning | step time x prompt tuning |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for m in result["methods"]:
    if not m["seeds"]:
      lines.append(f"| {m['method']} | {m['task']} | {m['rate']:g} | no finished run | | | | |")
      continue
    chance = "-" if m["above_chance"] is None else f"{m['above_chance']} of {m['seeds']}"
    lines.append(f"| {m['method']} | {m['task']} | {m['rate']:g} | {m['score']} | {chance} | "
                 f"{m['parameters']:,} | {fmt(m['parameters_x'], '.1f')} | "
                 f"{fmt(m['step_time_x'], '.2f')} |")
  lines += ["", "Textual recursion's trainable parameters are prompt 2's; prompt 1 (pass 1 "
            "alone's row, trained first) is frozen in its stage 2. Step time: the median over "
            "a method's runs of the step rate in its last logging window (compilation "
            f"excluded), relative to the same median of the {s['prompt_length']}-token one "
            "pass; the machine's two cores were shared with other work, so read it to about "
            "+-20%.", ""]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  return idpt.experiment_main(argv, "benchmarks.research.recursion", __doc__.split("\n\n")[0],
                              NAME, FULL, QUICK, run_all,
                              lambda result: idpt.finished(result, claims, summary))


if __name__ == "__main__":
  main()
