"""A first user's path (issue 31): the model config read from the checkpoint, the run's
config saved with the run, readable outputs, quiet logs, file tasks in any gin order.

The backbone here is written the way `backbones.pretrain` exports one (an
Orbax T5X-layout checkpoint_N plus config.json), with random weights: its
config.json records relative_attention_max_distance = 32, which its shapes
cannot show (a T5X checkpoint alone reads 128). tests/test_quickstart.py
checks serve against infer on the quickstart's own pretrained backbone.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from prompt_tuning import backbones, readers
from prompt_tuning.cli import main as main_lib
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.readers import config as config_lib
from prompt_tuning.runtime.specs import ModelSpec


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  import orbax.checkpoint as ocp
  out = str(tmp_path_factory.mktemp("backbone") / "synthetic_tiny")
  config = backbones.backbone_config("tiny")
  shapes, _ = params_lib.abstract_params(T5(config))  # Only the config is under test.
  ocp.PyTreeCheckpointer().save(os.path.join(out, "checkpoint_3"), {
      "target": jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)})
  config_lib.write_record(out, config)
  return out


def test_backbone_records_every_field_in_config_json(backbone):
  with open(os.path.join(backbone, "config.json")) as f:
    record = json.load(f)
  expected = backbones.backbone_config("tiny")
  assert record["relative_attention_max_distance"] == 32
  assert set(record) >= set(expected.__dataclass_fields__)
  assert not readers.is_hf_folder(backbone)  # Still read as a T5X checkpoint.
  assert readers.config_for(backbone) == readers.config_for(
      os.path.join(backbone, "checkpoint_3")) == expected
  assert ModelSpec(checkpoint=backbone).config.relative_attention_max_distance == 32


def test_old_sidecar_name_and_t5x_config_gin_are_read(backbone, tmp_path):
  old = str(tmp_path / "old")
  shutil.copytree(backbone, old)
  os.rename(os.path.join(old, "config.json"), os.path.join(old, "config.json.txt"))
  assert readers.config_for(old).relative_attention_max_distance == 32
  # A T5X run folder: config.gin (T5X's operative config) beside checkpoint_N.
  os.remove(os.path.join(old, "config.json.txt"))
  assert readers.config_for(old).relative_attention_max_distance == 128  # Shapes only.
  with open(os.path.join(old, "config.gin"), "w") as f:
    f.write("network.T5Config.emb_dim = 64\nnetwork.T5Config.dropout_rate = %DROPOUT\n"
            "network.T5Config.relative_attention_max_distance = 32\n")
  assert readers.config_for(os.path.join(old, "checkpoint_3")).relative_attention_max_distance \
      == 32


def test_contradicting_bindings_name_both_values(backbone, capsys):
  wrong = backbones.backbone_config("tiny").replace(relative_attention_max_distance=128)
  with pytest.raises(ValueError, match=r"relative_attention_max_distance=128.*records "
                     r"relative_attention_max_distance=32"):
    ModelSpec(wrong, checkpoint=backbone)
  assert main_lib.main(["inspect", backbone, "--relative_attention_max_distance=128"]) == 2
  err = capsys.readouterr().err
  assert "128" in err and "32" in err and err.count("\n") == 1
  assert main_lib.main(["inspect", backbone]) == 0
  assert "relative_attention_max_distance=32" in capsys.readouterr().out


def test_train_saves_its_config_and_infer_needs_only_model_dir(backbone, tmp_path, capsys,
                                                               monkeypatch):
  """Issue 31, points 1 and 3: no models/ file for train; MODEL_DIR/config.gin holds the
  operative configuration; `infer MODEL_DIR` takes the rest from it, the command line
  overrides it and the output says which."""
  model_dir = str(tmp_path / "run")
  train_args = [
      "--gin_file=prompts/soft_prompt.gin", "--gin_file=prompts/random_uniform.gin",
      "--gin_file=runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='synthetic_reverse_bare'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{backbone}'", "--gin.PROMPT_LENGTH=2",
      "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}"]
  assert main_lib.main(["train", *train_args]) == 0
  out = capsys.readouterr()
  assert "step: 2" in out.out.splitlines() and "{" not in out.out  # Lines, not a dict.
  assert "train: step 2/2, loss" in out.err  # Not a terminal: lines, no progress bar.
  # TRAIN_STEPS=2: the default log period (min(100, max(1, 2 // 10))) logs both steps.
  with open(os.path.join(model_dir, "train", "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2]
  with open(os.path.join(model_dir, "config.gin")) as f:
    saved = f.read()
  assert "prompt-tuning train --gin_file=prompts/soft_prompt.gin" in saved
  assert "TRAIN_STEPS = 2" in saved
  assert "T5Config.relative_attention_max_distance = 32" in saved  # Read off config.json.
  capsys.readouterr()
  # Again on the finished MODEL_DIR: nothing to do, exit 0.
  assert main_lib.main(["train", *train_args]) == 0
  assert "nothing to do: finished at step 2" in capsys.readouterr().out
  assert main_lib.main(["infer", model_dir, "--gin.MAX_INFER_EXAMPLES=2",
                        "--gin.BATCH_SIZE=1"]) == 0
  err = capsys.readouterr().err
  assert f"using the configuration saved in {os.path.join(model_dir, 'config.gin')}" in err
  assert "overridden on the command line: BATCH_SIZE" in err
  infer_file = os.path.join(model_dir, "infer", "synthetic_reverse_bare-validation-step_2.jsonl")
  with open(infer_file) as f:
    assert len(f.readlines()) == 2
  # Point 6: each eval row says how it decoded; the prompt's provenance keeps every eval,
  # keyed by split and method.
  assert main_lib.main(["eval", model_dir, "--gin.MAX_EVAL_EXAMPLES=2"]) == 0
  assert main_lib.main(["eval", model_dir, "--gin_file=decoding/rank_classification.gin",
                        "--gin.CLASS_LABELS=['ab', 'ba']", "--gin.MAX_EVAL_EXAMPLES=2"]) == 0
  with open(os.path.join(model_dir, "eval", "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["decoding"] for r in rows] == ["greedy", "rank_classification"]
  assert rows[1]["class_labels"] == ["ab", "ba"]
  from prompt_tuning.prompts import provenance
  recorded = provenance.read(os.path.join(model_dir, "prompts", "step_2",
                                          "encoder_prompt.prompt.npy"))["metrics"]
  assert set(recorded) == {"synthetic_reverse_bare/validation/greedy",
                           "synthetic_reverse_bare/validation/rank_classification"}
  capsys.readouterr()
  # A MODEL_DIR without a saved config is one line naming the file.
  assert main_lib.main(["eval", str(tmp_path)]) == 2
  assert "config.gin not found" in capsys.readouterr().err
  # export-peft and serve take the backbone and the newest prompt from the run.
  prompt = os.path.join(model_dir, "prompts", "step_2", "encoder_prompt.prompt.npy")
  adapter = str(tmp_path / "adapter")
  assert main_lib.main(["export-peft", f"--prompt={model_dir}", f"--out={adapter}"]) == 0
  assert f"prompt {prompt}, backbone {backbone}" in capsys.readouterr().err
  assert os.path.isfile(os.path.join(adapter, "adapter_config.json"))
  from prompt_tuning.serving import cli as serving_cli
  seen = {}
  monkeypatch.setattr(serving_cli, "run", lambda args: seen.update(vars(args)) or 0)
  assert main_lib.main(["serve", model_dir]) == 0
  assert seen["checkpoint"] == backbone
  assert seen["prompt"] == [f"synthetic_reverse_bare={prompt}"]


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, capsys):
  import sys
  monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` fails as if absent.
  assert main_lib.main(["serve", "/nonexistent", "--prompt_length=2"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "pip install 'prompt-tuning[serve]'" in err


def test_default_log_period_gives_ten_points():
  from prompt_tuning.train.specs import ReportSpec
  assert [ReportSpec().period(n) for n in (2, 30, 999, 30000)] == [1, 3, 99, 100]
  assert ReportSpec(log_period=7).period(30000) == 7


def test_quiet_by_default_on_cpu():
  """Issue 31, point 8: no oneDNN or CUDA start-up lines; seqio's cache advice goes, other
  warnings stay."""
  import logging
  import subprocess
  import sys
  from prompt_tuning.cli import logging_setup
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
  done = subprocess.run([sys.executable, "-m", "prompt_tuning.cli.main", "tasks", "list",
                         "synthetic_reverse_bare$"], capture_output=True, text=True, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        timeout=300)
  assert done.returncode == 0 and done.stdout == "synthetic_reverse_bare\n"
  assert done.stderr.strip().endswith("registered") and len(done.stderr.splitlines()) == 1, \
      done.stderr
  logging_setup.configure()
  absl = logging.getLogger("absl")
  def record(message):
    return logging.LogRecord("absl", logging.WARNING, __file__, 1, message, (), None)
  assert not absl.filter(record("Using an uncached FunctionDataset for training is not ..."))
  assert absl.filter(record("something real"))


def test_local_file_task_whatever_the_gin_file_order():
  """Issue 31, point 4: tasks/local_file.gin before the runs/ file (its own example's order)
  still makes the file task the run's task."""
  import gin
  from prompt_tuning.cli import gin as gin_utils
  for files in (["tasks/local_file.gin", "runs/prompt_infer.gin"],
                ["runs/prompt_infer.gin", "tasks/local_file.gin"]):
    gin.clear_config()
    gin_utils.parse_gin(files, ["file_task.name = 'mine'"])
    gin_utils.bind_file_task()
    assert repr(gin.query_parameter("%MIXTURE_OR_TASK_NAME")) == "@file_task()", files
  gin.clear_config()
  gin_utils.parse_gin(["runs/prompt_infer.gin"], ["MIXTURE_OR_TASK_NAME = 'other'"])
  assert not gin_utils.bind_file_task()  # No file task: nothing changes.
  gin.clear_config()


def test_string_labels_need_no_verbalizer_map(tmp_path):
  """Issue 31, point 4: string labels are their own targets; numeric ones still need words."""
  from prompt_tuning.tasks import local_files
  data = tmp_path / "reviews.jsonl"
  data.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in (
      ("a masterpiece", "positive"), ("dull", "negative"), ("fun", "positive"))))
  import seqio
  name = local_files.file_task("pt_first_use_strings", {"train": str(data)}, "review: {text}",
                               "label")
  task = seqio.get_mixture_or_task(name)
  rows = list(task.source.get_dataset("train").as_numpy_iterator())
  assert [r["targets"].decode() for r in rows] == ["positive", "negative", "positive"]
  assert task.postprocess_fn("positive") != task.postprocess_fn("negative")
  numbers = tmp_path / "numbers.jsonl"
  numbers.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
  with pytest.raises(ValueError, match="numeric labels: give it a verbalizer map"):
    local_files.file_task("pt_first_use_numbers", {"train": str(numbers)}, "{text}", "label")
