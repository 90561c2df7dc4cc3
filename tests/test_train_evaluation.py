"""Evaluation during training (EVAL_PERIOD): T5X's train_eval and infer_eval.

One tiny run trains 4 steps with EVAL_PERIOD=2; its infer_eval figures must
equal what `prompt-tuning eval` reports for the checkpoints of those steps.
"""

import json
import os

import numpy as np
import pytest

from tests.test_binaries import TINY_MODEL_GIN, _run

EVAL = ("--gin.EVAL_PERIOD=2", "--gin.EVAL_STEPS=2", "--gin.MAX_EVAL_EXAMPLES=12")


def _records(run, name):
  return [json.loads(line) for line in open(os.path.join(run, name, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_eval")
  (root / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  run = str(root / "run")
  assert _run("train", run, "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2", *EVAL) == 0
  return run


def test_train_eval_and_infer_eval_are_written_every_period(evaluated):
  run = evaluated
  teacher = _records(run, "train_eval")
  assert [r["step"] for r in teacher] == [2, 4]
  for r in teacher:
    assert np.isfinite(r["loss"]) and 0.0 <= r["accuracy"] <= 1.0 and r["num_batches"] == 2
    assert r["split"] == "validation"
  assert teacher[0]["loss"] != teacher[1]["loss"]  # the prompt trained in between
  inferred = _records(run, "infer_eval")
  assert [r["step"] for r in inferred] == [2, 4]
  assert all(r["num_examples"] == 12 and "accuracy" in r for r in inferred)
  for name in ("train_eval", "infer_eval"):
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, name)))
  summary = json.load(open(os.path.join(run, "train_summary.json")))
  assert summary["last_eval"]["step"] == 4
  assert summary["last_eval"]["infer_eval"]["accuracy"] == inferred[1]["accuracy"]


def test_infer_eval_equals_prompt_tuning_eval_of_that_steps_checkpoint(evaluated):
  run = evaluated
  inferred = {r["step"]: r for r in _records(run, "infer_eval")}
  for step in (2, 4):
    assert _run("eval", run, f"--gin.CHECKPOINT_STEP={step}", "--gin.MAX_EVAL_EXAMPLES=12") == 0
  evaluated_records = {r["step"]: r for r in _records(run, "eval")}
  for step in (2, 4):
    ours, theirs = inferred[step], evaluated_records[step]
    metric_names = sorted(k for k in theirs if k not in ("step", "task", "split"))
    assert metric_names and metric_names == sorted(
        k for k in ours if k not in ("step", "task", "split"))
    assert {k: ours[k] for k in metric_names} == {k: theirs[k] for k in metric_names}, step
