"""The research suite (`python -m benchmarks.research`): its quick run, and its refusal
to report a table that cannot separate methods."""

import json
import os

import pytest

from benchmarks import research
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
  with pytest.raises(research.SuiteError, match="research_reverse_bare"):
    research.check_separates(rows, "scale")
  rows[0]["score"] = 99.0
  research.check_separates(rows, "scale")  # One run differs: the figure can separate.
  # All equal but not 0 or 100 (e.g. chance on a balanced task) is reported, not refused.
  research.check_separates([{**r, "score": 50.0} for r in rows], "scale")


def test_quick_run_writes_every_figure_with_three_seeds(tmp_path):
  out = tmp_path / "out"
  assert research.main(["--quick", "--no_progress", "--out", str(out),
                        "--work_dir", str(tmp_path / "work")]) == 0
  results = json.loads((out / "research.json").read_text())
  assert len(research.QUICK.seeds) >= 3
  for experiment in ("scale", "init", "length"):
    groups = research._aggregate(results[experiment], "method", "task", "size")  # pylint: disable=protected-access
    assert groups and all(g["seeds"] == len(research.QUICK.seeds) for g in groups)
    for g in groups:
      assert 0.0 <= g["mean"] <= 100.0 and g["std"] >= 0.0
  # Prompt tuning trains a [P, H] prompt; fine-tuning trains the whole backbone.
  scale = {r["method"]: r["trainable_parameters"] for r in results["scale"]}
  width = 64  # the tiny backbone
  assert scale[research.prompt_tuning(research.QUICK).name] == research.QUICK.prompt_length * width
  assert scale[research.FINETUNE.name] == results["backbone_parameters"]["tiny"]
  assert [r["members"] for r in results["ensemble"]] == [len(research.QUICK.seeds)]
  verdicts = {c["verdict"] for c in results["claims"]}
  assert verdicts <= {"reproduced", "not reproduced", "not tested (one size)"}
  text = (out / "research.md").read_text()
  assert "| claim | verdict | numbers |" in text
  assert os.path.getsize(out / "research_scale_and_length.png") > 1000
