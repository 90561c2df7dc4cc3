"""Evaluation during training (EVAL_PERIOD): T5X's train_eval and infer_eval.

One tiny run trains 4 steps with EVAL_PERIOD=2; its infer_eval figures must
equal what `prompt-tuning eval` reports for the checkpoints of those steps.
"""

import json
import logging
import os

import numpy as np
import pytest

from tests.test_binaries import TINY_MODEL_GIN, _run

EVAL = ("--gin.EVAL_PERIOD=2", "--gin.EVAL_STEPS=2", "--gin.MAX_EVAL_EXAMPLES=12")


def _records(run, name):
  return [json.loads(line) for line in open(os.path.join(run, name, "metrics.jsonl"))]


class _Compiles(logging.Handler):
  """The programs JAX compiles (`jax.log_compiles`) while each evaluation runs."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.evaluation = None  # The step of the evaluation running, or None between them.
    self.by_evaluation: dict = {}

  def emit(self, record):
    message = record.getMessage()
    if self.evaluation is not None and message.startswith("Compiling "):
      self.by_evaluation[self.evaluation].append(message.split(" ")[1])

  def watch(self, evaluate):
    """Evaluator.__call__, recording which evaluation a compilation falls in."""
    def watched(evaluator, step, *args, **kwargs):
      self.evaluation = step
      self.by_evaluation[step] = []
      try:
        return evaluate(evaluator, step, *args, **kwargs)
      finally:
        self.evaluation = None
    return watched


_COMPILES = _Compiles()  # Of the `evaluated` run.


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  import jax
  from prompt_tuning.train import evaluator as evaluator_lib
  root = tmp_path_factory.mktemp("train_eval")
  (root / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  run = str(root / "run")
  jax_log = logging.getLogger("jax")
  jax_log.addHandler(_COMPILES)
  try:
    with pytest.MonkeyPatch.context() as patch, jax.log_compiles():
      patch.setattr(evaluator_lib.Evaluator, "__call__",
                    _COMPILES.watch(evaluator_lib.Evaluator.__call__))
      assert _run("train", run, "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2", *EVAL) == 0
  finally:
    jax_log.removeHandler(_COMPILES)
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


def test_each_evaluation_program_compiles_once_per_run(evaluated):
  """The teacher-forced and inference programs compile at the first evaluation, and
  every later period reuses them (no recompilation per period)."""
  compiles = _COMPILES.by_evaluation
  assert sorted(compiles) == [2, 4]
  first = compiles[2]
  assert any("eval_step" in name for name in first), first
  assert len(first) >= 2, first  # The teacher-forced step and an inference program.
  assert compiles[4] == [], compiles[4]  # The second period compiles nothing at all.


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


def test_the_best_prompt_is_kept_with_its_provenance(evaluated):
  run = evaluated
  accuracies = [r["accuracy"] for r in _records(run, "infer_eval")]
  best = json.load(open(os.path.join(run, "best", "best.json")))
  # The task's first metric, the first evaluation to reach the maximum.
  want_step = [2, 4][int(np.argmax(accuracies))]
  assert best == dict(step=want_step, metric="accuracy", value=max(accuracies), mode="max")
  np.testing.assert_array_equal(
      np.load(os.path.join(run, "best", "encoder_prompt.prompt.npy")),
      np.load(os.path.join(run, "prompts", f"step_{want_step}", "encoder_prompt.prompt.npy")))
  summary = json.load(open(os.path.join(run, "train_summary.json")))
  assert summary["best"]["step"] == want_step and summary["best"]["metric"] == "accuracy"
  assert [n for n in os.listdir(run) if n.startswith("best_at_")] == [f"best_at_{want_step}"]
  assert "early_stopped" not in summary and summary["step"] == 4


# No change of accuracy exceeds 2: best at step 1, stopped at step 3 (patience 2).
STOPPING = ("--gin.EVAL_PERIOD=1", "--gin.EVAL_STEPS=1", "--gin.MAX_EVAL_EXAMPLES=4",
            "--gin.EARLY_STOPPING_PATIENCE=2", "--gin.MIN_DELTA=2.0")


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory):
  """A 6-step run, checkpoints every 2 steps, an evaluation every step, that stops early
  (`_cli_train`'s flags).
  The early-stopping test reads it; the kill-anywhere test compares its killed run with
  it (the same flags), so the uninterrupted run is trained once."""
  root = tmp_path_factory.mktemp("stopped_early")
  (root / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  run = str(root / "run")
  # A fresh process, like the killed runs it is compared with bitwise: trained in the
  # test process, it read whatever XLA flags and device count that worker had.
  result = _cli_train(run)
  assert result.returncode == 0, result.stderr[-2000:]
  return run


def test_early_stopping_stops_after_patience_evaluations(stopped_early):
  run = stopped_early
  summary = json.load(open(os.path.join(run, "train_summary.json")))
  assert summary["early_stopped"]["step"] == 3 and summary["step"] == 3
  assert "did not improve by more than 2 in 2 evaluations" in summary["early_stopped"]["reason"]
  assert summary["best"]["step"] == 1
  # The stop step is saved: 3 is not a period step (2, 4, 6).
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "3"]
  assert [r["step"] for r in _records(run, "infer_eval")] == [1, 2, 3]


def test_the_papers_run_file_sets_up_its_protocol():
  import gin
  from prompt_tuning.cli import gin as gin_utils
  gin.clear_config()
  gin_utils.parse_gin(["models/t5_1_1_small_prompt.gin", "runs/prompt_finetune_paper.gin"],
                      ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 't'",
                       "INITIAL_CHECKPOINT_PATH = '/ckpt'"])
  try:
    assert gin.query_parameter("%TRAIN_STEPS") == 30000
    assert gin.query_parameter("prompt_tuning_adafactor.learning_rate") == 0.3
    assert gin.query_parameter("%EVAL_PERIOD") == 1000
    assert gin.query_parameter("%BEST_METRIC") is None  # the task's first metric
  finally:
    gin.clear_config()


def test_eval_and_infer_take_checkpoint_step_best(evaluated):
  run = evaluated
  best = json.load(open(os.path.join(run, "best", "best.json")))
  inferred = {r["step"]: r for r in _records(run, "infer_eval")}
  # Its checkpoint is not needed: only the exported prompts of best/ are read.
  hidden = os.path.join(run, "checkpoints_hidden")
  os.rename(os.path.join(run, "checkpoints"), hidden)
  os.makedirs(os.path.join(run, "checkpoints"))
  try:
    assert _run("eval", run, "--gin.CHECKPOINT_STEP='best'", "--gin.MAX_EVAL_EXAMPLES=12") == 0
    assert _run("infer", run, "--gin.CHECKPOINT_STEP='best'", "--gin.MAX_INFER_EXAMPLES=2") == 0
  finally:
    os.rmdir(os.path.join(run, "checkpoints"))
    os.rename(hidden, os.path.join(run, "checkpoints"))
  record = _records(run, "eval")[-1]
  assert record["step"] == best["step"]
  assert record["accuracy"] == inferred[best["step"]]["accuracy"] == best["value"]
  assert os.path.exists(os.path.join(
      run, "infer", f"pt_test_sentiment-validation-step_{best['step']}.jsonl"))


def test_serve_and_infer_take_the_best_folder_as_a_prompt(evaluated, tmp_path):
  """best/ (or its file) is a prompt wherever a prompt file is: serve's --prompt, and
  infer's PROMPT_FILE; its provenance sidecar is found and checked through the folder."""
  from prompt_tuning.cli import main as main_lib
  from prompt_tuning.serving import cli as serving_cli
  from tests.conftest import fixture_path
  run = evaluated
  best = os.path.join(run, "best")
  file = os.path.join(best, "encoder_prompt.prompt.npy")
  backbone = fixture_path("t5x_tiny_checkpoint")
  engine, _ = serving_cli.build(main_lib.build_parser().parse_args(
      ["serve", backbone, f"--prompt=folder={best}", f"--prompt=file={file}",
       "--relative_attention_max_distance=8", "--no_warmup", "--max_prompts=2"]))
  bank, rows = engine.prompts.snapshot()
  for name in ("folder", "file"):
    np.testing.assert_array_equal(np.asarray(bank)[rows[name]], np.load(file))
  # infer with the folder as PROMPT_FILE predicts what CHECKPOINT_STEP='best' predicts.
  step = json.load(open(os.path.join(best, "best.json")))["step"]
  by_step = os.path.join(run, "infer", f"pt_test_sentiment-validation-step_{step}.jsonl")
  if not os.path.exists(by_step):  # Written by test_eval_and_infer_take_checkpoint_step_best.
    assert _run("infer", run, "--gin.CHECKPOINT_STEP='best'", "--gin.MAX_INFER_EXAMPLES=2") == 0
  (tmp_path / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  other = str(tmp_path / "from_folder")
  assert _run("infer", other, "--gin_file=prompts/from_file.gin", f"--gin.PROMPT_FILE='{best}'",
              "--gin.RESTORE_CHECKPOINT=False", "--gin.MAX_INFER_EXAMPLES=2") == 0
  (name,) = os.listdir(os.path.join(other, "infer"))
  ours = [json.loads(line) for line in open(os.path.join(other, "infer", name))]
  theirs = [json.loads(line) for line in open(by_step)]
  assert [(r["prediction"], r["score"]) for r in ours] == [
      (r["prediction"], r["score"]) for r in theirs]


# --- kill anywhere, with evaluation, the best prompt and early stopping ----------

def _cli_train(model_dir, fault=None):
  from tests import test_training_guarantees
  return test_training_guarantees._cli_train(  # pylint: disable=protected-access
      model_dir, fault, steps=6, extra=STOPPING)


def _unique_records(run, name):
  return sorted({json.dumps(r, sort_keys=True) for r in _records(run, name)})


def test_sigkill_anywhere_then_resume_keeps_best_and_stop_step(stopped_early, tmp_path):
  import signal
  (tmp_path / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  straight = stopped_early  # Uninterrupted, with the same flags as the killed run.
  run = str(tmp_path / "killed")
  # During the first best export (nothing saved yet), during an evaluation
  # (step 2 not saved: its evaluation comes first), right after step 3.
  for fault in ("during_best_export:1", "during_eval:2", "after_step:3"):
    result = _cli_train(run, fault)
    assert result.returncode == -signal.SIGKILL, (fault, result.stderr[-2000:])
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2"]
  result = _cli_train(run)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Resumed from step 2" in result.stderr
  for folder in (straight, run):
    summary = json.load(open(os.path.join(folder, "train_summary.json")))
    assert summary["early_stopped"]["step"] == 3 and summary["best"]["step"] == 1
  assert open(os.path.join(run, "best", "best.json")).read() == open(
      os.path.join(straight, "best", "best.json")).read()
  assert np.load(os.path.join(run, "best", "encoder_prompt.prompt.npy")).tobytes() == np.load(
      os.path.join(straight, "best", "encoder_prompt.prompt.npy")).tobytes()
  assert not [n for n in os.listdir(run) if n.startswith(".best_staging_")]
  for name in ("train_eval", "infer_eval"):
    assert _unique_records(run, name) == _unique_records(straight, name), name
  # A run that stopped early stays stopped when started again. In this process: the
  # check reads files only (no signal, fault or log line), and a binary start costs
  # more than the run.
  assert _run("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2", *STOPPING) == 0
  summary = json.load(open(os.path.join(run, "train_summary.json")))
  assert summary["step"] == 3 and summary["early_stopped"]["step"] == 3
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "3"]

