"""Issue 35's recursion experiment (benchmarks/research/recursion.py): its quick run
measures every method and writes claims with p, interval and a verdict word; the
equal-budget prompt holds the connector's parameters to within one token."""

import json

import numpy as np
import pytest

from benchmarks.research import recursion, stats
from tests.conftest import assert_claims_well_formed, report_only_again, require_miniature_xs


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  """`--quick` on the cached xs backbone (skipped, with the one line naming the command,
  where the miniature is not made): (result, its output folder)."""
  require_miniature_xs()
  tmp = tmp_path_factory.mktemp("recursion_quick")
  res = recursion.main(["--quick", "--out", str(tmp / "out"), "--work_dir", str(tmp / "work")])
  return res, tmp


@pytest.mark.parametrize("size", ["xs", "m"])
def test_the_equal_budget_prompt_holds_the_connectors_parameters_within_one_token(size):
  from prompt_tuning.miniature import family as mini
  config = mini.backbone_config(size)
  settings = recursion.QUICK if size == "xs" else recursion.FULL
  connector = recursion.connector_parameters(settings, config)
  tokens = recursion.equal_length(settings, config)
  assert 0 <= tokens * config.emb_dim - connector < config.emb_dim, (tokens, connector)
  assert tokens > settings.prompt_length  # a longer prompt than one pass's


def _rows(method, scores, n=100):
  """Finished runs of `method` with the given test accuracies (%), first examples right."""
  return [dict(method=method, score=s, test_correct="1" * round(s * n / 100) +
               "0" * (n - round(s * n / 100))) for s in scores]


def test_every_claim_is_tested_once_a_side_learned_and_none_before():
  p = " (10 tokens)"
  learned = dict(rows=_rows(recursion.NEURAL + " (10 + 10 tokens)", [70, 72, 68, 71, 69])
                 + _rows(recursion.TEXTUAL + " (10 + 10 tokens)", [70, 72, 68, 71, 69])
                 + _rows(recursion.STEP2 + p, [70, 72, 68, 71, 69])
                 + _rows(recursion.STEP2_EQUAL + " (89 tokens)", [70, 72, 68, 71, 69])
                 + _rows(recursion.ONE_PASS + p, [40, 42, 38, 41, 39])
                 + _rows(recursion.EQUAL + " (89 tokens)", [40, 42, 38, 41, 39]))
  out = recursion.claims(learned)
  assert [c["control"] for c in out] == [recursion.ONE_PASS + p, recursion.EQUAL + " (89 tokens)",
                                         recursion.ONE_PASS + p, recursion.ONE_PASS + p,
                                         recursion.EQUAL + " (89 tokens)"]
  for c in out:
    assert c["verdict"] == stats.REPRODUCED, c
    assert c["p"] < 0.05 and c["ci"][0] > 0 and "permutation p" in c["numbers"]
  at_chance = dict(rows=[dict(r, score=25.0, test_correct="1" * 25 + "0" * 75)
                         for r in learned["rows"]])
  for c in recursion.claims(at_chance):
    assert c["verdict"].startswith(stats.NOT_TESTABLE + ": no prompt") and c["p"] is None
  (missing, *_) = recursion.claims(dict(rows=_rows(recursion.ONE_PASS + p, [40])))
  assert missing["verdict"] == stats.not_testable("a side has no finished run")


def test_the_quick_run_measures_every_method_and_writes_claims_with_verdicts(quick):
  res, tmp = quick
  measured = {m["method"]: m for m in res["methods"]}
  assert len(measured) == 7 and all(m["seeds"] == 1 and m["parameters"] > 0
                                    for m in measured.values())
  params = {}
  for prefix in (recursion.ONE_PASS, recursion.EQUAL, recursion.NEURAL, recursion.TEXTUAL,
                 recursion.STEP1, recursion.STEP2, recursion.STEP2_EQUAL):
    (name,) = [n for n in measured if n.startswith(prefix + " (")]
    params[prefix] = measured[name]["parameters"]
  assert all(m["step_time_x"] > 0 and m["parameters_x"] > 0 for m in measured.values())
  width, connector = res["width"], res["connector_parameters"]
  assert params[recursion.ONE_PASS] == params[recursion.STEP2] == 10 * width
  assert params[recursion.TEXTUAL] == 10 * width  # prompt 2 alone: prompt 1 is frozen
  assert params[recursion.NEURAL] == connector + 10 * width
  assert 0 <= params[recursion.EQUAL] - connector < width
  assert params[recursion.STEP2_EQUAL] == params[recursion.EQUAL]
  assert len(res["claims"]) == len(recursion.CLAIMS)
  assert_claims_well_formed(res["claims"])
  written = json.load(open(tmp / "out" / "recursion_miniature_quick.json"))
  assert not written["partial"] and written["claims"] == res["claims"]
  assert all(len(r["test_correct"]) == 16 for r in written["rows"])  # one shared test set
  text = open(tmp / "out" / "recursion_miniature_quick.md").read()
  assert "## Claims" in text and "step time x prompt tuning" in text and "PARTIAL" not in text


def test_report_only_rewrites_the_claims_and_the_table_from_the_json_alone(quick):
  res, tmp = quick
  again = report_only_again(recursion, "recursion_miniature", res, tmp)
  assert np.isclose(again["connector_parameters"], res["connector_parameters"])
