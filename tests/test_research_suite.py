"""The research suite (`python -m benchmarks.research`): its quick run, and its refusal
to report a table that cannot separate methods."""

import json
import os

import pytest

from benchmarks.research import cli, config, stats
from benchmarks.research import methods as research_methods
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


def test_the_scale_claim_needs_a_fine_tuning_lead_to_close():
  assert stats.gap_verdict([5.0, 2.0, 1.0]) == "reproduced"
  assert stats.gap_verdict([-1.3, 1.8, 18.1]) == "not reproduced"  # the lead opens
  # Prompt tuning ahead everywhere: a shrinking negative gap is not the paper's claim.
  assert stats.gap_verdict([-18.5, -15.9, -12.8]).startswith("not tested (no gap")
  assert stats.gap_verdict([3.0]) == "not tested (one size)"


def test_quick_run_writes_every_figure_with_three_seeds(tmp_path):
  out = tmp_path / "out"
  assert cli.main(["--quick", "--no_progress", "--out", str(out),
                        "--work_dir", str(tmp_path / "work")]) == 0
  results = json.loads((out / "research.json").read_text())
  assert len(config.QUICK.seeds) >= 3
  # The full run uses 3 seeds everywhere; the quick one keeps 3 where the ensemble
  # needs them (scale) and one elsewhere.
  assert len(config.FULL.seeds_of_methods) >= 3
  for experiment, seeds in (("scale", config.QUICK.seeds),
                            ("init", config.QUICK.seeds_of_methods),
                            ("length", config.QUICK.seeds_of_methods)):
    groups = stats.aggregate(results[experiment], "method", "task", "size")
    assert groups and all(g["seeds"] == len(seeds) for g in groups)
    for g in groups:
      assert 0.0 <= g["mean"] <= 100.0 and g["std"] >= 0.0
  # Prompt tuning trains a [P, H] prompt; fine-tuning trains the whole backbone.
  scale = {r["method"]: r["trainable_parameters"] for r in results["scale"]}
  width = 64  # the tiny backbone
  prompt_name = research_methods.prompt_tuning(config.QUICK).name
  assert scale[prompt_name] == config.QUICK.prompt_length * width
  assert scale[research_methods.FINETUNE.name] == results["backbone_parameters"]["tiny"]
  assert [r["members"] for r in results["ensemble"]] == [len(config.QUICK.seeds)]
  verdicts = {c["verdict"] for c in results["claims"]}
  assert verdicts <= {"reproduced", "not reproduced", "not tested (one size)",
                      "not tested (no gap: prompt tuning >= fine-tuning at every size)"}
  text = (out / "research.md").read_text()
  assert "| claim | verdict | numbers |" in text
  assert os.path.getsize(out / "research_scale_and_length.png") > 1000

  # Every stage ran. ATTEMPT's trainable part is its target prompt plus the
  # attention sub-network (bias-free W_down and W_up, a layer norm's scale and
  # bias); the source prompts stay frozen.
  q = config.QUICK
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
  # Recycling: both directions between the two tiny backbones, scored against the
  # strongest baseline of the target, all four baselines measured on each.
  rec = results["recycling"]
  assert {(r["source"], r["target"]) for r in rec["rows"]} == {
      ("tiny_seed0", "tiny_seed1"), ("tiny_seed1", "tiny_seed0")}
  for r in rec["rows"]:
    base = rec["baselines"][r["target"]]
    assert set(base) == {"no prompt", "random uniform", "sampled vocab", "class labels"}
    assert r["best_baseline"] == max(base.values())
    assert r["success"] == (r["recycled"] > r["best_baseline"])
  assert set(rec["summary"]) == set(q.recycle_methods)
  claims = " ".join(c["claim"] for c in results["claims"])
  for paper in ("Asai 2022", "He 2022", "Levine 2022", "Lester 2022"):
    assert paper in claims
  assert os.path.getsize(out / "research_recycling_and_methods.png") > 1000


def test_linear_combination_is_the_linear_map_so_the_grid_leaves_it_out():
  # The suite's recycling grid runs linear and mlp only: with exact least squares,
  # a prompt row written as a combination of the source support rows (a = p S+)
  # and rebuilt from the target rows (a T) is p S+ T, the linear map's p W.
  import numpy as np
  from prompt_tuning.recycling import methods
  rng = np.random.RandomState(0)
  source, target = rng.randn(256, 64), rng.randn(256, 96)  # support rows > widths
  prompt = rng.randn(10, 64)
  np.testing.assert_allclose(methods.fit_linear_combination(source, target)(prompt),
                             methods.fit_linear(source, target)(prompt), rtol=1e-4, atol=1e-4)
  assert "linear_combination" not in config.FULL.recycle_methods
  assert {"linear", "mlp"} <= set(config.FULL.recycle_methods)
