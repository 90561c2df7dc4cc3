"""The research suite (`python -m benchmarks.research`): its statistics (checked against
answers known independently), its run cache, its verdict rules, its quick run, and
its refusal to report a table that cannot separate methods."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from benchmarks.research import claims as claims_lib
from benchmarks.research import cli, config, experiments_family, runs, stats
from benchmarks.research import methods as research_methods
from benchmarks.research.family import Backbone
from prompt_tuning.tasks import research as research_tasks


def test_research_tasks_are_what_their_names_say():
  # Held-out classification: balanced enough that a constant answer is far from 100%.
  ex = research_tasks.examples("sorted", "validation", 512)
  yes = sum(t == "yes" for t in ex["targets"])
  assert 0.35 < yes / 512 < 0.65
  for w, t in zip(ex["inputs"], ex["targets"]):
    assert t == ("yes" if "".join(sorted(w)) == w else "no")
  comp = research_tasks.examples("compose", "train", 50)
  for w, t in zip(comp["inputs"], comp["targets"]):
    assert t == "".join(sorted(w, reverse=True))
  assert research_tasks.most_frequent("abcab") == "a"
  assert research_tasks.most_frequent("cbbcx") == "b"  # tie between b and c: alphabetical
  marked = research_tasks.examples("marked_count", "validation", 5)
  assert all(x.startswith("#") and t == str(len(x) - 1)
             for x, t in zip(marked["inputs"], marked["targets"]))
  assert set(marked["task_index"]) == {list(research_tasks.MARKED).index("count")}


def test_a_table_where_every_run_scores_the_same_fails_naming_the_task():
  rows = [dict(task="research_reverse_bare", size="tiny", method=m, seed=s, score=100.0)
          for m in ("a", "b") for s in (0, 1, 2)]
  with pytest.raises(config.SuiteError, match="research_reverse_bare"):
    stats.check_separates(rows, "scale")
  rows[0]["score"] = 99.0
  stats.check_separates(rows, "scale")  # One run differs: the figure can separate.
  # All equal but not 0 or 100 (e.g. chance on a balanced task) is reported, not refused.
  stats.check_separates([{**r, "score": 50.0} for r in rows], "scale")


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_examples():
  # 6 examples only a gets right, none only b: p = 2 * 0.5^6.
  a = [True] * 6 + [True] * 10 + [False] * 4
  b = [False] * 6 + [True] * 10 + [False] * 4
  r = stats.mcnemar(a, b)
  assert r["p"] == pytest.approx(2 / 64) and r["discordant"] == (6, 0)
  assert r["effect"] == pytest.approx(100 * 6 / 20)
  assert r["ci"][0] < r["effect"] < r["ci"][1]
  # 1 against 9: p = 2 * (C(10,0) + C(10,1)) / 2^10.
  a, b = [True] + [False] * 9, [False] + [True] * 9
  assert stats.mcnemar(a, b)["p"] == pytest.approx(2 * 11 / 1024)
  # Concordant examples change nothing; no discordant ones: p = 1.
  assert stats.mcnemar([True, False], [True, False])["p"] == 1.0
  from scipy import stats as scipy_stats
  rng = np.random.RandomState(3)
  a, b = rng.rand(300) < 0.6, rng.rand(300) < 0.5
  n_ab, n_ba = int(np.sum(a & ~b)), int(np.sum(~a & b))
  assert stats.mcnemar(a, b)["p"] == pytest.approx(
      scipy_stats.binomtest(n_ab, n_ab + n_ba, 0.5).pvalue)


def test_permutation_test_on_separated_identical_and_known_samples():
  # Completely separated 5 vs 5: only the two extreme relabellings reach the
  # observed difference: p = 2 / C(10, 5) = 2 / 252.
  r = stats.permutation_test([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
  assert r["p"] == pytest.approx(2 / 252) and r["effect"] == -5.0
  assert r["ci"][1] < 0  # the interval excludes no effect
  # With 3 seeds a side the smallest p is 2 / 20 = 0.1: why the suite uses 5.
  assert stats.permutation_test([1, 2, 3], [4, 5, 6])["p"] == pytest.approx(0.1)
  assert stats.permutation_test([7.0] * 5, [7.0] * 5)["p"] == 1.0
  # Welch's interval is scipy's.
  from scipy import stats as scipy_stats
  a, b = [3.0, 5.0, 4.0, 6.0, 5.5], [1.0, 2.5, 2.0, 4.0, 1.5]
  ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert stats.welch_interval(a, b) == pytest.approx((ci.low, ci.high))
  # Monte Carlo when there are too many relabellings, close to the exact answer.
  rng = np.random.RandomState(0)
  x, y = rng.randn(6), rng.randn(6) + 1.0
  exact = stats.permutation_test(x, y)["p"]
  assert stats.permutation_test(x, y, max_exact=10, resamples=20000)["p"] == pytest.approx(
      exact, abs=0.02)


def test_paired_bootstrap_and_binomial_test():
  same = stats.paired_bootstrap([1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0])
  assert same["p"] == 1.0 and same["effect"] == 0.0 and same["ci"] == (0.0, 0.0)
  shifted = stats.paired_bootstrap(np.arange(50) + 10.0, np.arange(50.0))
  assert shifted["effect"] == 10.0 and shifted["ci"] == (10.0, 10.0) and shifted["p"] == 0.0
  # 10 successes of 10 against a fair coin: p = 2 / 2^10.
  assert stats.binomial_test(10, 10, 0.5)["p"] == pytest.approx(2 / 1024)
  # A coin-flip answerer on 256 balanced examples beats a 50% baseline when it
  # gets more than 128 right: (1 - P(X = 128)) / 2.
  exact = (1 - math.comb(256, 128) / 2 ** 256) / 2
  assert stats.random_answer_success_rate([50.0] * 4, 256, 2) == pytest.approx(100 * exact, abs=1.0)


def test_verdict_words_and_that_no_claim_rests_on_any_success_or_the_best_length():
  assert stats.verdict(0.01, 3.0) == "reproduced (p < 0.05)"
  assert stats.verdict(0.01, -3.0) == "contradicted (p < 0.05)"
  assert stats.verdict(0.01, -3.0, expected_sign=-1) == "reproduced (p < 0.05)"
  assert stats.verdict(0.2, 30.0) == "inconclusive"
  assert stats.not_testable("why") == "not testable here: why"
  assert stats.is_verdict("not testable here: why") and not stats.is_verdict("reproduced")
  suite = config.FULL
  pt = research_methods.prompt_tuning(suite).name
  # A 10-token prompt ahead of a 1-token prompt on average but within the noise:
  # the old rule ("the best length beats length 1") said reproduced.
  length = [dict(length=n, score=s, method=pt, task="t", size="tiny", seed=i)
            for n, scores in ((1, [80, 70, 90, 75, 85]), (10, [82, 71, 88, 79, 86]))
            for i, s in enumerate(scores)]
  rows = claims_lib.byte_claims({"length": length}, suite)
  row = next(c for c in rows if "1-token" in c["claim"])
  assert row["verdict"] == "inconclusive" and row["control"] == "a 1-token prompt"
  assert row["ci"][0] < 0 < row["ci"][1]
  length = [{**r, "score": r["score"] + (25 if r["length"] == 10 else 0)} for r in length]
  row = next(c for c in claims_lib.byte_claims({"length": length}, suite)
             if "1-token" in c["claim"])
  assert row["verdict"] == "reproduced (p < 0.05)" and row["p"] == pytest.approx(2 / 252)
  # Every claim names its control and has one of the four verdicts; the byte
  # family's retired claims say why.
  for c in rows:
    assert c["control"] and stats.is_verdict(c["verdict"])
  assert sum(c["verdict"].startswith("not testable here: ") for c in rows) == len(
      claims_lib.RETIRED)
  # Recycling that succeeds in 11 of 60 cases where random answers succeed 34.5% of the
  # time: the old rule ("any success") said reproduced; against chance it is
  # contradicted, and it is never reproduced.
  fam = _family_results(successes=11, cases=60, chance=34.5)
  rec = [c for c in experiments_family.claims(fam, config.QUICK)
         if "more often than chance" in c["claim"]]
  assert rec and all(c["verdict"] == "contradicted (p < 0.05)" for c in rec)
  assert all("88.9%" in c["numbers"] for c in rec)
  fam = _family_results(successes=55, cases=60, chance=34.5)
  assert all(c["verdict"] == "reproduced (p < 0.05)"
             for c in experiments_family.claims(fam, config.QUICK)
             if "more often than chance" in c["claim"])
  # A family that cannot test a claim keeps its numbers and says why.
  fam["untestable"] = {"recycling": "byte rows"}
  assert all(c["verdict"] == "not testable here: byte rows"
             for c in experiments_family.claims(fam, config.QUICK) if "Lester 2022" in c["claim"])


def _family_results(successes: int, cases: int, chance: float) -> dict:
  """Family-experiment results with recycling rows of a given success count, every
  source prompt far above its backbone's baselines (90 against 50)."""
  run = lambda size, method, seed, score: dict(size=size, family_method=method, seed=seed,  # noqa: E731
                                               score=score, method=method)
  scale = [run(s, m, i, 50.0 + i + (5 if m == "finetune" else 0))
           for s in ("a", "b") for m in ("prompt", "finetune") for i in range(5)]
  rows = [dict(method=m, source="a_seed0", target="b_seed0", source_score=90.0,
               success=i < successes, untrained_success=False, best_baseline=50.0,
               orthogonal_success=False, recycled=60.0 if i < successes else 40.0,
               untrained_recycled=45.0, larger_target=i % 2 == 0, smaller_target=i % 2 == 1)
          for m in config.QUICK.family_recyclers for i in range(cases)]
  baselines = {"a_seed0": {"no prompt": 50.0}, "b_seed0": {"no prompt": 50.0}}
  return dict(name="fake", task="t", untestable={}, chance=chance,
              backbones=[dict(size="a", seed=0, parameters=10 ** 6),
                         dict(size="b", seed=0, parameters=10 ** 7)],
              scale=scale, init=[], length=[], ensemble=[],
              recycling=dict(task="t", rows=rows, random_answer_success=chance,
                             baselines=baselines, classes=2))


def _correct(right: int, n: int = 100) -> str:
  """A run's per-example test record: `right` of `n` correct."""
  return "1" * right + "0" * (n - right)


def test_the_permutation_interval_leaves_out_zero_exactly_when_p_is_below_005():
  # The miniature's 20-token against 1-token prompts (one seed of five learned):
  # every 20-token run is above every 1-token run, so p = 2/252, yet Welch's t
  # interval, which the report used to print, contains 0.
  long = [25.3, 25.5, 47.3, 31.2, 26.1]
  short = [24.9, 24.7, 25.0, 24.9, 24.8]
  r = stats.permutation_test(long, short)
  assert r["p"] == pytest.approx(2 / 252)
  assert r["welch_ci"][0] < 0 < r["welch_ci"][1]
  assert 0 < r["ci"][0] < r["effect"] < r["ci"][1]
  # The interval is the set of shifts the test does not reject: just inside
  # its edges the shifted test keeps p >= 0.05; just outside it rejects.
  a, b = np.asarray(long), np.asarray(short)
  for edge, inward in ((r["ci"][0], +1e-6), (r["ci"][1], -1e-6)):
    assert stats.permutation_test(a - (edge + inward), b)["p"] >= 0.05
    assert stats.permutation_test(a - (edge - 1e-3 * np.sign(inward)), b)["p"] < 0.05
  # On any data, 0 is outside the interval exactly when p < 0.05.
  rng = np.random.RandomState(1)
  for _ in range(60):
    x, y = rng.randn(5) + 2 * rng.rand(), rng.randn(5)
    t = stats.permutation_test(x, y)
    assert (t["ci"][0] <= 0 <= t["ci"][1]) == (t["p"] >= 0.05), t
  # With 3 runs a side no shift is ever rejected (the smallest p is 0.1): the
  # interval is unbounded, and the table says so.
  t = stats.permutation_test([1.0, 2.0, 3.0], [7.0, 8.0, 9.0])
  assert t["ci"] == (-math.inf, math.inf)
  row = stats.claim("c", "k", t)
  assert row["ci"] == [None, None] and "[-inf, +inf]" in stats.effect_text(row)
  json.dumps(row, allow_nan=False)  # the results file stays strict JSON


def test_prompts_that_never_beat_chance_are_not_a_test_of_init_length_or_ensembles():
  fam = _family_results(successes=30, cases=60, chance=25.0)
  prompt = lambda init, seed, right: dict(  # noqa: E731
      size="s", init=init, length=20, seed=seed, score=float(right), family_method="prompt",
      test_correct=_correct(right), method="prompt tuning")
  # Every prompt of both sides at chance (25 of 100 on a four-way task), but
  # the sampled-vocabulary side is ahead by noise that a permutation test
  # alone would call significant.
  fam["init"] = ([prompt("random_uniform", i, 24) for i in range(5)] +
                 [prompt("sampled_vocab", i, 30) for i in range(5)] +
                 [prompt("class_labels", i, 25) for i in range(5)])
  fam["length"] = ([{**prompt("sampled_vocab", i, 30), "length": 20} for i in range(5)] +
                   [{**prompt("sampled_vocab", i, 24), "length": 1} for i in range(5)])
  fam["scale"] += [{**prompt("sampled_vocab", i, 25), "size": "c"} for i in range(5)]
  fam["ensemble"] = [dict(size="c", members=5, vote=30.0, vote_correct=_correct(30),
                          selected_seed=0, selected_score=25.0, selected_correct=_correct(25),
                          mean_correct=[0.25] * 100, single_mean=25.0)]
  out = experiments_family.claims(fam, config.QUICK)
  prompts = [c for c in out if "init beats" in c["claim"] or "1-token" in c["claim"]
             or "ensemble" in c["claim"]]
  assert len(prompts) == 5
  for c in prompts:
    assert c["verdict"].startswith("not testable here: no prompt on either side beats chance")
    assert c["numbers"]
  # One prompt of the sampled side that learned (45 of 100: p < 0.05 against
  # 25%) makes the comparison a test again, whatever it says.
  fam["init"][5] = prompt("sampled_vocab", 0, 45)
  fam["length"][0] = {**prompt("sampled_vocab", 0, 45), "length": 20}
  out = experiments_family.claims(fam, config.QUICK)
  sampled = next(c for c in out if "sampled vocab init" in c["claim"])
  assert sampled["verdict"] == "reproduced (p < 0.05)" and sampled["p"] == pytest.approx(2 / 252)
  # Class labels against random uniform: still no prompt of either side learned.
  assert next(c for c in out if "class labels init" in c["claim"])["verdict"].startswith(
      "not testable here: no prompt")
  assert next(c for c in out if "1-token" in c["claim"])["verdict"] == "reproduced (p < 0.05)"
  # The bar, from the binomial tail summed here: P(X >= 32 | 100, 0.25) is
  # 0.069 and P(X >= 33) is 0.045.
  tail = lambda k: sum(math.comb(100, i) * 0.25 ** i * 0.75 ** (100 - i)  # noqa: E731
                       for i in range(k, 101))
  assert tail(32) > 0.05 > tail(33)
  assert experiments_family.learned(prompt("x", 0, 32), 25.0) is False
  assert experiments_family.learned(prompt("x", 0, 33), 25.0) is True


def test_recycling_counts_only_source_prompts_that_learned_their_task():
  fam = _family_results(successes=0, cases=0, chance=25.0)
  rec = fam["recycling"]
  rec["baselines"] = {"a_seed0": {"no prompt": 50.0}, "b_seed0": {"no prompt": 52.0},
                      "c_seed0": {"no prompt": 50.0}}
  case = lambda source, target, method, success: dict(  # noqa: E731
      source=source, target=target, method=method, success=success, best_baseline=50.0,
      source_score={"a_seed0": 80.0, "b_seed0": 53.0, "c_seed0": 51.0}[source],
      recycled=70.0 if success else 50.0, untrained_recycled=50.0, untrained_success=False,
      orthogonal_success=False, larger_target=target > source, smaller_target=target < source)
  # a's prompt learned (80 against 50); b's (53 against its 52) and c's (51
  # against 50) did not. Their cases fail, and would drag a's rate down.
  rec["rows"] = [case(s, t, m, s == "a_seed0" and t == "b_seed0")
                 for s in ("a_seed0", "b_seed0", "c_seed0")
                 for t in ("a_seed0", "b_seed0", "c_seed0") if s != t
                 for m in config.QUICK.family_recyclers]
  examples = config.QUICK.test_examples
  assert experiments_family.learned_sources(rec, examples) == {"a_seed0"}
  out = [c for c in experiments_family.claims(fam, config.QUICK) if "Lester 2022" in c["claim"]]
  rates = [c for c in out if "more often than chance" in c["claim"]]
  assert len(rates) == len(config.QUICK.family_recyclers)
  for c in rates:
    assert "50.0% of 2 cases" in c["numbers"] and "1 of 3 source prompts" in c["numbers"]
    assert "every case: 16.7% of 6" in c["numbers"]
  # No source prompt that learned: nothing to recycle, so no test at all.
  for r in rec["rows"]:
    r["source_score"] = 50.0
  out = [c for c in experiments_family.claims(fam, config.QUICK) if "Lester 2022" in c["claim"]]
  assert out and all(c["verdict"].startswith("not testable here: no source prompt beats")
                     for c in out)


def test_report_only_rewrites_the_claims_from_the_results_file_and_runs_nothing(
    tmp_path, monkeypatch):
  from benchmarks import machine
  fam = _family_results(successes=55, cases=60, chance=25.0)
  for b in fam["backbones"]:
    b["quality"] = {"heldout_loss": 5.0}
  fam["sweeps"], fam["recycling"]["support"] = [], dict(skip=1000, take=4000)
  for r in fam["scale"]:
    r.update(trainable_parameters=10, test_correct=_correct(int(r["score"])))
  results = dict(quick=False, preset="miniature", suite=dataclasses.asdict(config.MINIATURE),
                 machine=machine.cpu_info(), family=fam, seconds=60.0,
                 claims=[dict(claim="a stale claim", control="-", verdict="inconclusive",
                              numbers="")])
  (tmp_path / "research_miniature.json").write_text(json.dumps(results))
  monkeypatch.setattr(experiments_family, "run_family",
                      lambda *a, **k: pytest.fail("--report_only trained something"))
  assert cli.main(["--suite", "miniature", "--report_only", "--out", str(tmp_path)]) == 0
  rewritten = json.loads((tmp_path / "research_miniature.json").read_text())
  names = [c["claim"] for c in rewritten["claims"]]
  assert "a stale claim" not in names and any("Lester 2022" in n for n in names)
  text = (tmp_path / "research_miniature.md").read_text()
  assert "Raw figures: `research_miniature.json`" in text
  assert "| b | prompt | 52.0 +- 1.6 | 5 of 5 |" in text  # 50-54 of 100 against 25%
  # No results file: one line naming what to run first.
  assert cli.main(["--suite", "miniature", "--report_only", "--out",
                   str(tmp_path / "empty")]) == 1


def test_the_run_cache_is_keyed_by_every_setting_that_changes_a_result(tmp_path):
  ckpt = tmp_path / "backbone"
  ckpt.mkdir()
  (ckpt / "weights").write_bytes(b"1234")
  bb = Backbone("tiny", str(ckpt), config=None, vocabulary=None)
  suite = config.QUICK
  method = research_methods.prompt_tuning(suite)
  base = runs.run_settings(method, "research_sorted_bare", bb, 0, suite, 20)
  folder = runs.run_dir_of(str(tmp_path), base)
  assert runs.run_dir_of(str(tmp_path), runs.run_settings(
      method, "research_sorted_bare", bb, 0, suite, 20)) == folder  # the same run: a hit
  changed = {
      "learning rate": runs.run_settings(method.with_rate(1.0), "research_sorted_bare", bb, 0,
                                         suite, 20),
      "steps": runs.run_settings(method, "research_sorted_bare", bb, 0, suite, 21),
      "seed": runs.run_settings(method, "research_sorted_bare", bb, 1, suite, 20),
      "task": runs.run_settings(method, "research_reverse_bare", bb, 0, suite, 20),
      "prompt length": runs.run_settings(research_methods.prompt_tuning(suite, length=3),
                                         "research_sorted_bare", bb, 0, suite, 20),
      "method settings": runs.run_settings(dataclasses.replace(method, settings=("other",)),
                                           "research_sorted_bare", bb, 0, suite, 20),
      "pretraining seed": runs.run_settings(dataclasses.replace(method), "research_sorted_bare",
                                            dataclasses.replace(bb, seed=1), 0, suite, 20),
      "validation size": runs.run_settings(method, "research_sorted_bare", bb, 0,
                                           dataclasses.replace(suite, eval_examples=17), 20),
      "batch size": runs.run_settings(method, "research_sorted_bare", bb, 0,
                                      dataclasses.replace(suite, batch_size=8), 20)}
  (ckpt / "weights").write_bytes(b"5678")  # retrained in place: same path, new weights
  changed["backbone weights"] = runs.run_settings(method, "research_sorted_bare", bb, 0, suite,
                                                  20)
  for what, settings in changed.items():
    assert runs.run_dir_of(str(tmp_path), settings) != folder, what
  # A cached result is found only under its own key: run() trains (here: fails on
  # the fake backbone) rather than return the cached one for a changed setting.
  os.makedirs(folder)
  with open(os.path.join(folder, "result.json"), "w") as f:
    json.dump(dict(score=1.0), f)
  (ckpt / "weights").write_bytes(b"1234")
  assert runs.run(method, "research_sorted_bare", bb, 0, suite, str(tmp_path),
                  steps=20)["score"] == 1.0
  with pytest.raises(Exception):
    runs.run(method.with_rate(1.0), "research_sorted_bare", bb, 0, suite, str(tmp_path),
             steps=20)


def test_quick_run_writes_every_figure_and_tests_every_claim(tmp_path):
  import time
  out = tmp_path / "out"
  start = time.time()
  assert cli.main(["--quick", "--no_progress", "--out", str(out),
                   "--work_dir", str(tmp_path / "work")]) == 0
  print(f"quick run: {time.time() - start:.0f} s")
  results = json.loads((out / "research.json").read_text())
  q = config.QUICK
  # The full run uses at least 5 seeds everywhere (an exact permutation test can
  # then reach p < 0.05); the quick one 2.
  assert len(config.FULL.seeds) >= 5 and len(config.FULL.seeds_of_methods) >= 5
  fam = results["family"]
  for experiment in ("init", "length", "scale"):
    groups = stats.aggregate(fam[experiment], "method", "task", "size")
    assert groups and all(g["seeds"] == len(q.seeds) for g in groups)
    for g in groups:
      assert 0.0 <= g["mean"] <= 100.0 and g["std"] >= 0.0
  # Every run selected its step on validation and scored it on the test split.
  for r in fam["scale"] + results["methods"] + results["multitask"]:
    assert r["split"] == "test" and str(r["selected_step"]) in r["validation"]
    assert r["validation_score"] == max(r["validation"].values())
    assert len(r["test_correct"]) == q.test_examples or "multitask" in r["task"]
  # The learning rate of each method at each size comes from its sweep.
  assert {s["method"] for s in fam["sweeps"]} == {
      research_methods.FINETUNE.name, "prompt tuning (sampled_vocab, 10 tokens)"}
  # Prompt tuning trains a [P, H] prompt; fine-tuning trains the whole backbone.
  width = 64  # the tiny backbone
  scale = {r["family_method"]: r["trainable_parameters"] for r in fam["scale"]}
  assert scale["prompt"] == q.family_prompt_length * width
  assert scale["finetune"] == results["backbone_parameters"]["tiny"]
  assert [r["members"] for r in fam["ensemble"]] == [q.ensemble_size]
  for c in results["claims"]:
    assert stats.is_verdict(c["verdict"]) and c["control"], c
  text = (out / "research.md").read_text()
  assert "| claim | control | effect [95% interval], p | verdict | test | numbers |" in text
  assert os.path.getsize(out / "research_length_and_methods.png") > 1000

  # Every stage ran. ATTEMPT's trainable part is its target prompt plus the
  # attention sub-network (bias-free W_down and W_up, a layer norm's scale and
  # bias); the source prompts stay frozen.
  methods = {r["method"]: r for r in results["methods"]}
  attempt = next(r for name, r in methods.items() if name.startswith("ATTEMPT"))
  bottleneck = 100  # the paper's r
  assert attempt["trainable_parameters"] == (q.prompt_length * width + 2 * width * bottleneck
                                             + 2 * width)
  # The multi-task prompt is sized to HyperPrompt's trainable parameters.
  multi = {r["method"]: r["trainable_parameters"] for r in results["multitask"]}
  hyper = next(v for k, v in multi.items() if k.startswith("HyperPrompt"))
  mtpt = next(v for k, v in multi.items() if k.startswith("multi-task prompt"))
  tasks = len(research_tasks.MARKED)
  assert abs(mtpt - hyper) <= (tasks + 1) * width // 2 + 1
  assert any(k.startswith("ID-PT") for k in multi)
  # Recycling: both directions between the two tiny backbones, all three
  # recyclers, scored against the strongest baseline of the target, all four
  # baselines measured on each, with the chance controls.
  rec = fam["recycling"]
  assert {(r["source"], r["target"]) for r in rec["rows"]} == {
      ("tiny_seed0", "tiny_seed1"), ("tiny_seed1", "tiny_seed0")}
  assert {r["method"] for r in rec["rows"]} == set(q.family_recyclers) == {
      "linear", "linear_combination", "mlp"}
  for r in rec["rows"]:
    base = rec["baselines"][r["target"]]
    assert set(base) == {"no prompt", "random uniform", "sampled vocab", "class labels"}
    assert r["best_baseline"] == max(base.values())
    assert r["success"] == (r["recycled"] > r["best_baseline"])
    assert {"untrained_recycled", "orthogonal"} <= set(r)
  assert 0.0 <= rec["random_answer_success"] <= 100.0
  claims = " ".join(c["claim"] for c in results["claims"])
  for paper in ("Asai 2022", "He 2022", "Levine 2022", "Lester 2022"):
    assert paper in claims
  # On the byte family the claims that need a real vocabulary are not testable,
  # and say why.
  assert any(c["verdict"].startswith("not testable here: ") and "Lester 2022" in c["claim"]
             for c in results["claims"])


def test_linear_combination_is_the_linear_map_so_its_rows_match_linear():
  # The suite runs all three of the paper's recyclers; with exact least squares,
  # a prompt row written as a combination of the source support rows (a = p S+)
  # and rebuilt from the target rows (a T) is p S+ T, the linear map's p W.
  from prompt_tuning.recycling import methods
  rng = np.random.RandomState(0)
  source, target = rng.randn(256, 64), rng.randn(256, 96)  # support rows > widths
  prompt = rng.randn(10, 64)
  np.testing.assert_allclose(methods.fit_linear_combination(source, target)(prompt),
                             methods.fit_linear(source, target)(prompt), rtol=1e-4, atol=1e-4)
  assert set(config.FULL.family_recyclers) == {"linear", "linear_combination", "mlp"}


def test_the_miniature_preset_runs_what_issue_34_asks():
  m = config.PRESETS["miniature"]
  assert m is config.MINIATURE and m.family_experiments and m.byte_experiments == ()
  assert config.PRESET_FAMILIES["miniature"] == "benchmarks.research.family:miniature_family"
  # Across seeds at least 5 a side; the ensemble's 5 members are the size axis's seeds.
  assert len(m.seeds) >= 5 and m.ensemble_size == 5 <= len(m.seeds)
  assert len(m.prompt_rates) == len(m.finetune_rates) == 3
  assert m.family_lengths == (1, 5, 20, 100) and m.family_prompt_length in m.family_lengths
  assert m.sampled_top == 5000 and (m.recycle_skip, m.recycle_take) == (1000, 4000)
  assert set(m.family_recyclers) == {"linear", "linear_combination", "mlp"}
  assert len(m.backbone_seeds) >= 2  # recycling across pretraining seeds, both directions
  # The test split of miniature_pos (372 examples) is scored whole.
  assert m.test_examples == 372


def test_the_miniature_suite_without_its_family_is_one_line_naming_the_make(
    tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PROMPT_TUNING_CACHE", str(tmp_path / "cache"))
  assert cli.main(["--suite", "miniature", "--no_progress", "--out", str(tmp_path / "out"),
                   "--work_dir", str(tmp_path / "work")]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "python -m prompt_tuning.miniature make" in err, err
  assert not (tmp_path / "out").exists()


def test_a_preset_names_its_report():
  from benchmarks import report as report_lib
  from benchmarks.research import report
  assert report_lib.renderer("research_miniature") is report.markdown
  results = {"quick": False, "preset": "miniature"}
  assert report._flags(results) == " --suite miniature"  # pylint: disable=protected-access
  assert report._flags({"quick": True}) == " --quick"  # pylint: disable=protected-access
  # The run's CPU time is reported (on a shared machine wall time says little).
  note = report._runs_note({"cpu_seconds": 600.0, "runs": dict(  # pylint: disable=protected-access
      trained=3, cached=2, train_minutes=0.0, family_train_minutes=4.5)})
  assert note == (" (3 runs trained now, 2 found in the run cache; 10.0 min of CPU (user + "
                  "system); the family's size, initialization and length runs took 4.5 min of "
                  "training when they ran)")
