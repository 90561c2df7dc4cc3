"""End to end: the train / eval / infer binaries on tiny configs, and learning.

The backbone is the checkpoint written by T5X itself (../shared/fixtures);
`tests.tiny_tasks` registers a small sentiment task with the real T5
vocabulary.
"""

import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from prompt_tuning.runtime.specs import CheckpointSpec, DataSpec, InferenceSpec, ModelSpec
from prompt_tuning.cli import main as main_lib
from prompt_tuning import trees as tree_lib
from prompt_tuning.train import loop
from prompt_tuning.train.specs import ReportSpec
from tests import test_t5x_reader
from tests.conftest import REPO_ROOT, TINY_T5X_CONFIG, fixture_path

# The T5X fixture's shapes, as a gin model file.
FIXTURE_MODEL_GIN = """
MODEL_CONFIG = @T5Config()
T5Config.vocab_size = 32128
T5Config.emb_dim = 4
T5Config.num_heads = 2
T5Config.num_encoder_layers = 2
T5Config.num_decoder_layers = 2
T5Config.head_dim = 2
T5Config.mlp_dim = 8
T5Config.relative_attention_num_buckets = 4
T5Config.relative_attention_max_distance = 8
"""

TINY_MODEL_GIN = ("import tests.tiny_tasks\n" + FIXTURE_MODEL_GIN
                  + "include 'prompts/soft_prompt.gin'\nPROMPT_LENGTH = 4\n")


def _run(command, model_dir, *extra):
  gin.clear_config()
  model_gin = os.path.join(os.path.dirname(model_dir), "tiny_model.gin")
  argv = [command, f"--gin_file={model_gin}",
          f"--gin_file=runs/prompt_{'finetune' if command == 'train' else command}.gin",
          f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
          "--gin.BATCH_SIZE=8", *extra]
  code = main_lib.main(argv)
  gin.clear_config()
  return code


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  fixture_path("t5_spm.model")
  root = tmp_path_factory.mktemp("binaries")
  (root / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  return root


@pytest.fixture(scope="module")
def trained(workdir):
  """Train 4 steps, stop; resume to 6. Also an uninterrupted 6-step run."""
  run = str(workdir / "run")
  # Metrics only at the checkpoints (a period longer than the run; the default logs each step).
  assert _run("train", run, "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2",
              "--gin.ReportSpec.frozen_digest=True", "--gin.ReportSpec.log_period=100") == 0
  first = json.load(open(os.path.join(run, "train_summary.json")))
  assert _run("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2",
              "--gin.ReportSpec.log_period=100") == 0
  straight = str(workdir / "straight")
  assert _run("train", straight, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=3") == 0
  return run, straight, first


def test_train_writes_checkpoints_prompts_and_logs(trained):
  run, _, first = trained
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4", "6"]
  for step in (2, 4, 6):
    prompt = np.load(os.path.join(run, "prompts", f"step_{step}", "encoder_prompt.prompt.npy"))
    assert prompt.shape == (4, 4) and prompt.dtype == np.float32
  records = [json.loads(line) for line in open(os.path.join(run, "train", "metrics.jsonl"))]
  assert [r["step"] for r in records] == [2, 4, 6]
  for key in ("loss", "accuracy", "learning_rate", "steps_per_sec", "input_tokens_per_sec"):
    assert all(np.isfinite(r[key]) for r in records), key
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, "train")))
  # Only what changes is saved: far less than the backbone.
  assert first["checkpoint_bytes"] < first["backbone_bytes"]


def t5x_fixture_arrays() -> dict:
  """The T5X fixture's arrays by '/'-joined name, read by the tests' independent decoder."""
  ckpt = fixture_path("t5x_tiny_checkpoint", "checkpoint_3")
  reference = {}
  for name, node in test_t5x_reader._independent_msgpack_target(
      os.path.join(ckpt, "checkpoint")).items():
    if name.endswith("/kvstore/path"):
      reference[name[:-len("/kvstore/path")]] = test_t5x_reader._independent_zarr_read(
          os.path.join(ckpt, node))
    elif isinstance(node, np.ndarray):
      reference[name] = node
  return reference


def t5x_fixture_digest() -> str:
  """The digest of the T5X fixture's arrays, read by the tests' independent decoder."""
  return tree_lib.tree_digest(tree_lib.unflatten(t5x_fixture_arrays()))


def test_frozen_weights_are_bit_identical_to_the_t5x_checkpoint(trained):
  _, _, first = trained
  assert first["frozen_sha256"] == t5x_fixture_digest()


def test_resumed_run_equals_uninterrupted_run(trained):
  run, straight, _ = trained
  a = np.load(os.path.join(run, "prompts", "step_6", "encoder_prompt.prompt.npy"))
  b = np.load(os.path.join(straight, "prompts", "step_6", "encoder_prompt.prompt.npy"))
  initial = np.load(os.path.join(run, "prompts", "step_2", "encoder_prompt.prompt.npy"))
  assert not np.array_equal(a, initial)
  np.testing.assert_array_equal(a, b)


def test_eval_writes_metrics(trained):
  run, _, _ = trained
  assert _run("eval", run, "--gin.MAX_EVAL_EXAMPLES=12") == 0
  assert _run("eval", run, "--gin_file=decoding/rank_classification.gin",
              "--gin.CLASS_LABELS=['negative', 'positive']", "--gin.MAX_EVAL_EXAMPLES=12") == 0
  records = [json.loads(line) for line in open(os.path.join(run, "eval", "metrics.jsonl"))]
  assert len(records) == 2 and all(r["step"] == 6 and r["num_examples"] == 12 for r in records)
  # Rank classification's accuracy is what scoring each label by hand gives.
  expected = _rank_accuracy_by_hand(run, ["negative", "positive"], 12)
  assert records[1]["accuracy"] == pytest.approx(expected, abs=1e-6)


def _rank_accuracy_by_hand(run, labels, count):
  """Accuracy (in %) of picking, per example, the label with the highest summed
  log-probability under teacher forcing: the model's logits, summed in numpy (no
  decoding or evaluation code)."""
  import seqio
  import tests.tiny_tasks  # noqa: F401
  from prompt_tuning import evaluation
  from prompt_tuning.prompts import soft
  from prompt_tuning.runtime import data as data_lib
  lengths = {"inputs": 16, "targets": 4}
  spec = ModelSpec(TINY_T5X_CONFIG, fixture_path("t5x_tiny_checkpoint"), soft.SoftPrompt(4))
  setup, params, _ = evaluation.load_for_inference(run, spec, InferenceSpec())
  examples = data_lib.eval_examples("pt_test_sentiment", "validation", lengths, count)
  vocab = seqio.get_mixture_or_task("pt_test_sentiment").output_features["targets"].vocabulary
  enc = np.zeros((len(examples), lengths["inputs"]), np.int32)
  for i, ex in enumerate(examples):
    enc[i, :len(ex["inputs"])] = ex["inputs"]
  scores = []
  for label in labels:
    ids = list(np.asarray(vocab.encode(label))) + [1]
    target = np.zeros((len(examples), len(ids)), np.int32) + np.asarray(ids, np.int32)
    shifted = np.concatenate([np.zeros((len(examples), 1), np.int32), target[:, :-1]], 1)
    logits = np.asarray(setup.model.apply({"params": params}, enc, shifted, target),
                        np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
        -1, keepdims=True)) - logits.max(-1, keepdims=True)
    scores.append(np.take_along_axis(log_probs, target[..., None], -1)[..., 0].sum(-1))
  predicted = [labels[k] for k in np.argmax(np.stack(scores, -1), -1)]
  truth = [ex["targets_pretokenized"].decode() for ex in examples]
  return 100.0 * np.mean([p == t for p, t in zip(predicted, truth)])


def _predictions(run, *extra):
  assert _run("infer", run, "--gin.MAX_INFER_EXAMPLES=10", *extra) == 0
  path = os.path.join(run, "infer", "pt_test_sentiment-validation-step_6.jsonl"
                      if "--gin.RESTORE_CHECKPOINT=False" not in extra
                      else "pt_test_sentiment-validation-step_0.jsonl")
  return [json.loads(line) for line in open(path)]


def test_infer_writes_predictions(trained):
  run, _, _ = trained
  rows = _predictions(run)
  assert len(rows) == 10
  assert rows[0]["input"].startswith("review: ") and rows[0]["target"] in ("positive", "negative")
  assert all(isinstance(r["prediction"], str) and np.isfinite(r["score"]) for r in rows)


def test_exported_prompt_file_gives_identical_results(trained, workdir):
  run, _, _ = trained
  exported = os.path.join(run, "prompts", "step_6", "encoder_prompt.prompt.npy")
  from_ckpt = _predictions(run)
  from_file = _predictions(run, "--gin_file=prompts/from_file.gin",
                           f"--gin.PROMPT_FILE='{exported}'", "--gin.RESTORE_CHECKPOINT=False")
  assert from_file == from_ckpt
  metrics_file = os.path.join(run, "eval", "metrics.jsonl")
  n_before = len(open(metrics_file).readlines())
  assert _run("eval", run, "--gin_file=decoding/rank_classification.gin",
              "--gin.CLASS_LABELS=['negative', 'positive']", "--gin.MAX_EVAL_EXAMPLES=12",
              "--gin_file=prompts/from_file.gin", f"--gin.PROMPT_FILE='{exported}'",
              "--gin.RESTORE_CHECKPOINT=False") == 0
  records = [json.loads(line) for line in open(metrics_file)]
  assert len(records) == n_before + 1
  assert records[-1]["accuracy"] == records[1]["accuracy"]


def test_python_m_entry_point_and_bad_flags(workdir):
  # A real process, as a user runs it: a bad binding is one clear error.
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.train",
       f"--gin_file={workdir}/tiny_model.gin", "--gin_file=runs/prompt_finetune.gin",
       "--gin.MODEL_DIR='/tmp/never'", "--gin.train.no_such_arg=3"],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 2
  assert "no_such_arg" in result.stderr and "Traceback" not in result.stderr
  assert _run("train", str(workdir / "x"), "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentimnt'") == 2
  assert _run("eval", str(workdir / "never_trained")) == 2


def test_unknown_task_suggests_close_names(workdir, capsys):
  _run("train", str(workdir / "typo"), "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentimnt'")
  assert "did you mean ['pt_test_sentiment'" in capsys.readouterr().err


def test_prompt_learns_on_a_tiny_model(tmp_path, optimized):
  """A prompt on a frozen width-64 T5 (written in T5X's Orbax layout) cuts the
  validation loss of the sentiment task by at least 40%."""
  import orbax.checkpoint as ocp
  import tests.tiny_tasks  # noqa: F401  (registers the task)
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5, T5Config
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  from prompt_tuning.runtime import data as data_lib
  from prompt_tuning.runtime import freezing
  from prompt_tuning.runtime import setup as model_setup
  from prompt_tuning.train import step as step_lib

  fixture_path("t5_spm.model")
  cfg = T5Config(vocab_size=32128, emb_dim=64, num_heads=4, num_encoder_layers=2,
                 num_decoder_layers=2, head_dim=16, mlp_dim=128)
  backbone = str(tmp_path / "backbone")
  ocp.PyTreeCheckpointer().save(os.path.join(backbone, "checkpoint_0"), {
      "target": jax.device_get(params_lib.init_params(T5(cfg), jax.random.PRNGKey(0)))})
  lengths = {"inputs": 16, "targets": 4}

  def prompt():
    return soft.SoftPrompt(length=8, init=initializers.sampled_vocab())

  def validation_loss(trainable, setup):
    eval_step = jax.jit(step_lib.make_eval_step(setup.model))
    totals = None
    for batch in data_lib.train_batches("pt_test_sentiment", lengths, 16, split="validation",
                                        shuffle=False, num_epochs=1):
      m = jax.device_get(eval_step(trainable, setup.frozen, batch))
      totals = m if totals is None else {k: totals[k] + m[k] for k in m}
    return float(totals["cross_entropy_sum"] / totals["num_tokens"])

  setup = model_setup.build(ModelSpec(cfg, backbone, prompt()))
  before = validation_loss(setup.trainable, setup)
  run = str(tmp_path / "run")
  loop.train(model_dir=run, model=ModelSpec(cfg, backbone, prompt()),
             data=DataSpec("pt_test_sentiment", lengths, 16), train_steps=150,
             checkpoint=CheckpointSpec(period=150), report=ReportSpec(progress=False))
  store = checkpoints_lib.CheckpointStore(run)
  trained_prompt = store.restore_trainable(setup.abstract.trainable)
  store.close()
  after = validation_loss(trained_prompt, setup)
  print(f"validation loss before {before:.3f}, after {after:.3f}")
  assert after < 0.6 * before, (before, after)


def test_each_checkpoint_array_is_read_once_and_restores_run_no_initializer(workdir, monkeypatch):
  """Two-phase setup: train reads every backbone array once (the sampled-vocabulary
  initializer is handed the embedding table already read); eval/infer restoring a
  checkpoint read it once and run no initializer; the abstract phase reads nothing."""
  from prompt_tuning import readers
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning.runtime import setup as model_setup
  ckpt = fixture_path("t5x_tiny_checkpoint")
  names = set(readers.open_checkpoint(ckpt).names())
  sampled = []
  real = initializers._sample_rows
  monkeypatch.setattr(initializers, "_sample_rows",
                      lambda *a, **k: sampled.append(1) or real(*a, **k))

  def reads():
    counts = dict(readers.ARRAY_READS)
    readers.ARRAY_READS.clear()
    return counts

  run = str(workdir / "reads")
  reads()
  assert _run("train", run, "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2") == 0
  counts = reads()
  assert {name for _, name in counts} == names
  assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
  assert sampled == [1]
  sampled.clear()
  for command in ("eval", "infer"):
    assert _run(command, run, f"--gin.MAX_{command.upper()}_EXAMPLES=4") == 0
    counts = reads()
    assert {name for _, name in counts} == names and set(counts.values()) == {1}
    assert sampled == [], f"{command} ran the prompt initializer while restoring"
  spec = ModelSpec(TINY_T5X_CONFIG, ckpt, soft.SoftPrompt(4, init=initializers.sampled_vocab()))
  abstract = model_setup.abstract(spec)
  assert reads() == {} and sampled == []
  assert abstract.trainable["encoder_prompt"]["prompt"].shape == (4, 4)


DECODER_PROMPT_GIN = TINY_MODEL_GIN + """
ModelSpec.decoder_prompt = @decoder/SoftPrompt()
decoder/SoftPrompt.length = 2
decoder/SoftPrompt.init = @prompt_init.random_uniform()
"""


def test_every_binary_takes_a_decoder_prompt(workdir):
  """The model spec is the same object in train, eval, infer and precompile."""
  (workdir / "decoder_model.gin").write_text(DECODER_PROMPT_GIN)
  model_gin = f"--gin_file={workdir / 'decoder_model.gin'}"
  run = str(workdir / "decoder_prompt")
  common = [f"--gin.MODEL_DIR='{run}'", "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", "--gin.BATCH_SIZE=8"]
  try:
    gin.clear_config()
    assert main_lib.main(["train", model_gin, "--gin_file=runs/prompt_finetune.gin", *common,
                          "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2"]) == 0
    exported = sorted(os.listdir(os.path.join(run, "prompts", "step_2")))
    assert exported == ["decoder_prompt.prompt.npy", "decoder_prompt.prompt.provenance.json",
                        "encoder_prompt.prompt.npy", "encoder_prompt.prompt.provenance.json"]
    exported = exported[::2]  # the prompts, each beside its provenance sidecar
    assert np.load(os.path.join(run, "prompts", "step_2", exported[0])).shape == (2, 4)
    gin.clear_config()
    assert main_lib.main(["eval", model_gin, "--gin_file=runs/prompt_eval.gin", *common,
                          "--gin.MAX_EVAL_EXAMPLES=4"]) == 0
    gin.clear_config()
    assert main_lib.main(["infer", model_gin, "--gin_file=runs/prompt_infer.gin", *common,
                          "--gin.MAX_INFER_EXAMPLES=4"]) == 0
    lines = open(os.path.join(run, "infer", "pt_test_sentiment-validation-step_2.jsonl"))
    assert len(lines.readlines()) == 4
    gin.clear_config()
    result = subprocess.run(
        [sys.executable, "-m", "prompt_tuning.cli.main", "precompile", model_gin,
         "--gin_file=runs/precompile.gin", "--gin.BATCH_SIZE=8",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["trainable_parameters"] == (4 + 2) * 4  # both prompts, [P, H] each
  finally:
    gin.clear_config()
