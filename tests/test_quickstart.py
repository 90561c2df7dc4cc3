"""The quickstart, shortened: a pretrained tiny backbone, then prompt tuning of
the held-out format, must beat both baselines by a clear margin."""

import dataclasses
import json
import os

import gin
import numpy as np
import pytest

from prompt_tuning import backbones, quickstart, readers
from prompt_tuning import trees as tree_lib
from prompt_tuning.models.t5 import T5
from tests.conftest import optimized_compiles

# Shortened from the defaults (the tiny backbone, 3000 pretraining steps at 2e-3 after
# 100 warmup steps, then 400 prompt steps) to fit a test: 700 pretraining steps at a
# higher peak rate (3e-3 after 50 warmup steps), then 200 prompt steps. Measured with
# seeds 0 and 1, before the prompt was selected by validation (the final prompt, scored
# on the validation words): trained prompt 99.2% and 84.4% vs 0% and 0%; instruction
# 99.2% and 100%.
PRETRAIN = backbones.PretrainConfig(size="tiny", steps=700, learning_rate=3e-3,
                                    warmup_steps=50)
PROMPT = quickstart.PromptConfig(steps=200)
# Exact-match points (out of 100) by which the trained prompt must win; the
# full quickstart wins by 100 (see benchmarks/results/amd-epyc-avx2/quickstart.md).
MARGIN = 30.0


@pytest.fixture(scope="module", autouse=True)
def _optimized():
  """The quickstart trains for hundreds of steps: full XLA optimizations pay here."""
  with optimized_compiles():
    yield


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  root = tmp_path_factory.mktemp("quickstart")
  return quickstart.run(cache_dir=str(root / "cache"), pretrain_cfg=PRETRAIN, prompt_cfg=PROMPT,
                        eval_examples=128, work_dir=str(root / "work"), progress=False)


def test_trained_prompt_beats_both_baselines(results):
  rows = results["rows"]
  trained = rows["trained prompt"]
  assert trained >= rows["no prompt"] + MARGIN, rows
  assert trained >= rows["random prompt (untrained)"] + MARGIN, rows
  # The backbone itself learned the task when told what to do.
  assert rows["with the instruction (reference)"] >= 80.0, rows


def test_results_are_written_and_printed(results, capsys):
  path = os.path.join(os.path.dirname(results["prompt_model_dir"]), "quickstart_results.json")
  assert json.load(open(path))["rows"] == results["rows"]
  table = quickstart.format_table(results)
  assert "trained prompt" in table and "no prompt" in table
  # Where things are, and the next command (issue 31).
  assert os.path.isfile(results["prompt_file"])
  assert f"backbone (a T5X checkpoint folder): {results['backbone']}" in table
  assert f"prompt-tuning serve {results['backbone']} --prompt reverse={results['prompt_file']}" \
      in table


def test_prompt_is_selected_on_validation_and_reported_on_test(results):
  """Issue 33 point 7: the trained row is best/'s prompt, the step of the best validation
  exact match; the table scores the test split and names that step."""
  model_dir = results["prompt_model_dir"]
  sel = results["selection"]
  with open(os.path.join(model_dir, "infer_eval", "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert {r["split"] for r in rows} == {"validation"} and results["split"] == "test"
  assert sel["evaluated_steps"] == [100, 200] == [r["step"] for r in rows]
  best = max(rows, key=lambda r: r["exact_match"])  # The first of equals, as BEST_MODE max.
  assert (sel["step"], sel["value"]) == (best["step"], best["exact_match"])
  assert json.load(open(os.path.join(model_dir, "best", "best.json")))["step"] == sel["step"]
  assert results["prompt_file"] == os.path.join(model_dir, "best", "encoder_prompt.prompt.npy")
  table = quickstart.format_table(results)
  assert "unseen test words" in table and f"selected prompt: step {sel['step']} of 200" in table


def test_bfloat16_activations_give_the_same_held_out_table(results, tmp_path):
  """Issue 37: prompt tuning and evaluation computing in bfloat16 (the prompt and its
  optimizer state in float32, as T5X) on the same cached backbone: the baselines'
  rows are equal, and the trained prompt's within three held-out words. Not the
  issue's "equal": on this shortened setup (200 prompt steps, 128 words) the trained
  row differed by one word (97.7% vs 98.4%) in one run and by two (96.1% vs 97.7%,
  after selection by validation) in the full suite."""
  cache = os.path.dirname(os.path.dirname(results["backbone"]))
  bf16 = quickstart.run(cache_dir=cache, pretrain_cfg=PRETRAIN,
                        prompt_cfg=dataclasses.replace(PROMPT, dtype="bfloat16"),
                        eval_examples=128, work_dir=str(tmp_path), progress=False)
  assert bf16["backbone"] == results["backbone"]
  trained = "trained prompt"
  assert {k: v for k, v in bf16["rows"].items() if k != trained} == {
      k: v for k, v in results["rows"].items() if k != trained}
  assert abs(bf16["rows"][trained] - results["rows"][trained]) <= 3 * 100 / 128 + 1e-9
  assert np.load(bf16["prompt_file"]).dtype == np.float32


def test_backbone_is_cached_and_reused(results, monkeypatch):
  cache = os.path.dirname(os.path.dirname(results["backbone"]))
  monkeypatch.setattr(backbones.loop, "train", lambda **kw: pytest.fail("retrained"))
  assert backbones.pretrain(PRETRAIN, cache) == results["backbone"]


def test_training_run_loads_as_a_backbone(results):
  # The pretraining MODEL_DIR (this project's own checkpoints) and the
  # exported T5X-layout checkpoint hold the same weights.
  own = results["backbone"] + ".training"
  exported = results["backbone"]
  model = T5(backbones.backbone_config(PRETRAIN.size))
  a = tree_lib.flatten(readers.load_params(own, model))
  b = tree_lib.flatten(readers.load_params(exported, model))
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_gin_pretraining_config_matches_the_quickstart():
  from prompt_tuning.cli import gin as gin_utils
  gin.clear_config()
  for size in backbones.SIZES:
    assert gin_utils.model_config_from_gin([f"models/synthetic_{size}.gin"]) == (
        backbones.backbone_config(size))
    gin.clear_config()
  gin_utils.parse_gin(["models/synthetic_tiny.gin", "runs/pretrain_synthetic.gin"],
                      ["MODEL_DIR = '/tmp/x'"])
  assert gin.query_parameter("DataSpec.task") == "synthetic_pretrain"
  assert str(gin.query_parameter("ModelSpec.trainable_rules")) == "%FULL_FINETUNING_RULES"
  gin.clear_config()


def test_serve_and_infer_agree_on_the_backbone_with_default_flags(results, tmp_path):
  """Issue 31: no models/ file and no size flag; both read the config recorded with the
  backbone (relative_attention_max_distance 32, which its shapes cannot show)."""
  import argparse
  from prompt_tuning import decoding, layout
  from prompt_tuning.cli import main as main_lib
  from prompt_tuning.serving import cli as serving_cli
  backbone = results["backbone"]
  assert json.load(open(os.path.join(backbone, "config.json")))[
      "relative_attention_max_distance"] == 32
  # And its vocabulary (issue 31, point 2): serve's default reads it.
  assert json.load(open(os.path.join(backbone, "config.json")))["vocabulary"] == {"kind": "byte"}
  prompt_file = layout.prompt_file(results["prompt_model_dir"], PROMPT.steps)
  model_dir = str(tmp_path / "infer")
  assert main_lib.main([
      "infer", "--gin_file=prompts/soft_prompt.gin", "--gin_file=prompts/from_file.gin",
      "--gin_file=runs/prompt_infer.gin", f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='synthetic_reverse_bare'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{backbone}'", f"--gin.PROMPT_FILE='{prompt_file}'",
      f"--gin.PROMPT_LENGTH={PROMPT.length}", "--gin.RESTORE_CHECKPOINT=False",
      "--gin.MAX_INFER_EXAMPLES=4", "--gin.BATCH_SIZE=4"]) == 0
  (name,) = os.listdir(os.path.join(model_dir, "infer"))
  with open(os.path.join(model_dir, "infer", name)) as f:
    rows = [json.loads(line) for line in f]
  parser = argparse.ArgumentParser()
  serving_cli.add_arguments(parser)
  engine, _ = serving_cli.build(parser.parse_args(
      [backbone, f"--prompt=p={prompt_file}", "--no_warmup"]))
  assert engine.model_config.relative_attention_max_distance == 32
  bank, names = engine.prompts.snapshot()
  served = engine.generate(bank, [names["p"]] * len(rows),
                           [engine.tokenize(r["input"]) for r in rows],
                           decoding.DecodingConfig(max_decode_length=16))
  assert [row[0] for row in served] == [r["prediction"] for r in rows]
  np.testing.assert_allclose([row[1] for row in served], [r["score"] for r in rows],
                             rtol=1e-5, atol=1e-5)
