"""Issue 35's ID-PT experiment (benchmarks/research/idpt.py): its quick run measures every
method and writes claims with p, interval and a verdict word; its test is sound."""

import json
import os

import numpy as np
import pytest

from benchmarks.research import idpt, stats
from tests.conftest import assert_claims_well_formed, require_miniature_xs


def test_the_seed_and_example_bootstrap_finds_a_real_gap_and_not_a_null_one():
  rng = np.random.RandomState(0)
  base = rng.rand(200) < 0.5
  same = np.stack([base] * 5).astype(float)
  better = same.copy()
  better[:, :40] = 1.0  # 40 more examples right on every seed
  shown = idpt.seed_example_bootstrap(better, same, resamples=2000)
  assert shown["p"] < 0.05 and shown["ci"][0] > 0 and shown["effect"] > 0
  null = idpt.seed_example_bootstrap(same, same, resamples=2000)
  assert null["p"] > 0.5 and abs(null["effect"]) < 1e-9
  # Seeds that disagree widen the interval: one lucky seed is not a gap.
  lucky = same.copy()
  lucky[0, :] = 1.0
  assert idpt.seed_example_bootstrap(lucky, same, resamples=2000)["p"] > 0.05
  with pytest.raises(ValueError, match="one example set"):
    idpt.seed_example_bootstrap(same[:, :10], same)


def _rows(method, scores, n=100):
  """Finished runs of `method` with the given test accuracies (%), first examples right."""
  return [dict(method=method, score=s, test_correct="1" * round(s * n / 100) +
               "0" * (n - round(s * n / 100))) for s in scores]


def test_every_control_gets_a_tested_claim_once_a_side_learned_and_none_before():
  learned = _rows(idpt.IDPT, [70, 72, 68, 71, 69])
  controls = [idpt.ZEROED, f"{idpt.STATIC} (10 tokens)", f"{idpt.STATIC} (100 tokens)",
              f"{idpt.MARKED} (10 tokens)"]
  result = dict(rows=learned + [r for name in controls for r in _rows(name, [40, 42, 38, 41, 39])])
  out = idpt.claims(result)
  assert [c["control"].split(" (reference")[0] for c in out][1:3] == controls[1:3]
  assert len(out) == 4
  for c in out:
    assert c["verdict"] == stats.REPRODUCED, c
    assert c["p"] < 0.05 and c["ci"][0] > 0 and "permutation p" in c["numbers"]
  chance = dict(rows=_rows(idpt.IDPT, [25] * 5) + _rows(idpt.ZEROED, [24] * 5))
  (gated,) = idpt.claims(chance)
  assert gated["verdict"].startswith(stats.NOT_TESTABLE + ": no prompt") and gated["p"] is None


def test_the_quick_run_measures_every_method_and_writes_claims_with_verdicts(tmp_path):
  """`--quick` on the cached xs backbone (skipped, with the one line naming the command,
  where the miniature is not made)."""
  require_miniature_xs()
  res = idpt.main(["--quick", "--out", str(tmp_path / "out"),
                   "--work_dir", str(tmp_path / "work")])
  names = {m.name for m, _ in idpt.methods(idpt.QUICK, lambda: np.arange(100))}
  assert {m["method"] for m in res["methods"]} == names and len(names) == 5
  assert all(m["seeds"] == 1 and m["parameters"] > 0 for m in res["methods"])
  params = {m["method"]: m["parameters"] for m in res["methods"]}
  assert params[idpt.IDPT] == params[idpt.ZEROED]  # equal budget: only the reading differs
  assert params[f"{idpt.STATIC} (10 tokens)"] == 10 * 16  # xs width 16
  assert params[f"{idpt.STATIC} (20 tokens)"] == 20 * 16
  tested = {c["control"] for c in res["claims"]}
  assert len(res["claims"]) == 4 and len(tested) == 4
  assert_claims_well_formed(res["claims"])
  written = json.load(open(tmp_path / "out" / "idpt_miniature_quick.json"))
  assert not written["partial"] and written["claims"] == res["claims"]
  text = open(tmp_path / "out" / "idpt_miniature_quick.md").read()
  assert "## Claims" in text and "step time x prompt tuning" in text
  assert "PARTIAL" not in text
  # --report_only recomputes the claims and the table from the JSON alone, byte for byte.
  again = idpt.main(["--quick", "--report_only", "--out", str(tmp_path / "out"),
                     "--work_dir", str(tmp_path / "nothing_runs_here")])
  assert again["claims"] == res["claims"] and again["methods"] == res["methods"]
  assert open(tmp_path / "out" / "idpt_miniature_quick.md").read() == text
  assert not os.path.exists(tmp_path / "nothing_runs_here")
