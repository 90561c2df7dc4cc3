"""Issue 35's transfer experiment (benchmarks/research/transfer.py): its quick run trains
real source prompts, measures every method on the held-out target with ATTEMPT's
attention entropy, reports SPoT's retrieval against exhaustive transfer, and writes
claims with p, interval and a verdict word; --report_only rewrites it byte for byte."""

import glob
import json
import math
import os

import numpy as np
import pytest

from benchmarks.research import stats, transfer
from tests.conftest import assert_claims_well_formed, report_only_again, require_miniature_xs


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  """`--quick` on the cached xs backbone (skipped, with the one line naming the command,
  where the miniature is not made): (result, its folder)."""
  require_miniature_xs()
  tmp = tmp_path_factory.mktemp("transfer_quick")
  res = transfer.main(["--quick", "--out", str(tmp / "out"), "--work_dir", str(tmp / "work")])
  return res, tmp


def _rows(method, scores, n=100, **extra):
  """Finished runs of `method` with the given test accuracies (%), first examples right."""
  return [dict(method=method, score=s, test_correct="1" * round(s * n / 100) +
               "0" * (n - round(s * n / 100)), **extra) for s in scores]


def test_every_claim_is_tested_once_a_side_learned_and_none_before():
  settings = dict(temperatures=["d*e", "sqrt(d)", "1"])
  attempts = {t: f"{transfer.attempt_name(t)} (10 tokens, 4 sources)" for t in
              settings["temperatures"]}
  scratch = f"{transfer.SCRATCH} (10 tokens)"
  learned = dict(settings=settings, rows=(
      _rows(transfer.SPOT, [90, 91, 89, 92, 90]) + _rows(transfer.EXHAUSTIVE, [90, 91, 89, 92, 90])
      + _rows(attempts["d*e"], [90, 91, 89, 92, 90]) + _rows(attempts["sqrt(d)"], [70, 72, 68, 71, 69])
      + _rows(attempts["1"], [70, 72, 68, 71, 69]) + _rows(scratch, [60, 62, 58, 61, 59])))
  out = transfer.claims(learned)
  assert [c["control"] for c in out] == [scratch] * 5 + [attempts["sqrt(d)"], attempts["1"]]
  for c in out:
    assert c["verdict"] == stats.REPRODUCED, c
    assert c["p"] < 0.05 and c["ci"][0] > 0 and "permutation p" in c["numbers"]
  # A binary target: 50% is chance, so 55% on every side is no evidence.
  at_chance = dict(settings=settings, rows=[dict(r, score=50.0, test_correct="10" * 50)
                                            for r in learned["rows"]])
  for c in transfer.claims(at_chance):
    assert c["verdict"].startswith(stats.NOT_TESTABLE + ": no prompt") and "(50%)" in c["verdict"]
  (missing, *_) = transfer.claims(dict(settings=settings, rows=_rows(scratch, [60])))
  assert missing["verdict"] == stats.not_testable("a side has no finished run")


def test_the_quick_run_measures_every_method_and_writes_claims_with_verdicts(quick):
  res, tmp = quick
  settings = transfer.QUICK
  measured = {m["method"].split(" (")[0]: m for m in res["methods"]}
  assert set(measured) == {transfer.SCRATCH, transfer.SPOT, transfer.EXHAUSTIVE,
                           *map(transfer.attempt_name, ("d*e", "sqrt(d)", "1"))}
  width, p = res["width"], settings.prompt_length
  for name, m in measured.items():
    assert m["seeds"] == 2 and m["step_time_x"] > 0, m
    if name.startswith(transfer.ATTEMPT):
      # The target prompt, W_down, W_up and LN train; the sources do not.
      assert m["parameters"] == p * width + 2 * 100 * width + 2 * width
      assert 0.0 <= m["attention_entropy"] <= math.log(len(settings.sources) + 1) + 1e-6
    else:
      assert m["parameters"] == p * width and m["attention_entropy"] is None
  # The temperature reaches the attention: after so few steps, T = d*e leaves it
  # near uniform and T = 1 does not, on every seed.
  rows = res["rows"]
  for seed in settings.seeds:
    entropy = {r["method"].split(" (")[0]: r["attention_entropy"] for r in rows
               if r["seed"] == seed and "attention_entropy" in r}
    assert entropy[transfer.attempt_name("1")] < entropy[transfer.attempt_name("d*e")]
  assert all(len(r["entropy_by_step"]) == settings.evaluations for r in rows
             if "attention_entropy" in r)
  # Four real sources, exported and listed in a SPoT library; the target is none of them.
  assert [s["name"] for s in res["sources"]] == list(settings.sources)
  assert transfer.TARGET not in {s["task"] for s in res["sources"]}
  assert not {s["seed"] for s in res["sources"]} & set(settings.seeds)  # no init shared
  (index,) = glob.glob(str(tmp / "work" / "spot_library_*" / "index.json"))
  listed = json.load(open(index))["sources"]
  assert [e["name"] for e in listed] == list(settings.sources)
  for e in listed:
    assert np.load(os.path.join(os.path.dirname(index), e["prompt"])).shape == (p, width)
  # SPoT's retrieval per seed, its rank among the exhaustive ones, and the rows it made.
  order = res["exhaustive_order"]
  assert sorted(order) == sorted(settings.sources)
  assert [r["seed"] for r in res["retrieval"]] == list(settings.seeds)
  for r in res["retrieval"]:
    cosines = [c for _, c in r["ranking"]]
    assert cosines == sorted(cosines, reverse=True) and len(cosines) == len(settings.sources)
    assert r["retrieved"] == r["ranking"][0][0] and r["exhaustive_best"] == order[0]
    assert r["rank"] == order.index(r["retrieved"]) + 1
    (spot_row,) = [x for x in rows if x["method"] == transfer.SPOT and x["seed"] == r["seed"]]
    assert spot_row["source"] == r["retrieved"]
  assert {x["source"] for x in rows if x["method"] == transfer.EXHAUSTIVE} == {order[0]}
  # Claims: each with a verdict word, and p and a finite interval where tested.
  assert len(res["claims"]) == len(transfer.claim_list(res["settings"])) == 7
  assert_claims_well_formed(res["claims"])
  written = json.load(open(tmp / "out" / "transfer_miniature_quick.json"))
  assert not written["partial"] and written["claims"] == res["claims"]
  target_rows = [x for x in written["rows"] if x["task"] == transfer.TARGET]
  assert {len(x["test_correct"]) for x in target_rows} == {settings.test_examples}
  text = open(tmp / "out" / "transfer_miniature_quick.md").read()
  for heading in ("## Claims", "## Methods", "## Does SPoT retrieve the best source?",
                  "## Sources"):
    assert heading in text
  assert "beats chance, 50%" in text and "PARTIAL" not in text


def test_report_only_rewrites_the_claims_and_the_table_from_the_json_alone(quick):
  res, tmp = quick
  report_only_again(transfer, "transfer_miniature", res, tmp)
