"""The catalog of bad inputs, through the binary as a user meets it.

Every case ends the `prompt-tuning` binary with exit code 2 and one line
naming what was wrong and what was expected; no traceback anywhere in its
output (Orbax's and TensorStore's threads included); and MODEL_DIR is not
created, or left untouched where it existed (the same for an adapter folder
that export-peft refuses to replace). The README lists the same catalog.

All cases run in one fresh process (tests/binary_runner.py: the entry
point's `main` with fresh arguments per case, output caught at the file
descriptors), which saves the binary's imports per case; the issue's own case
(a backbone missing a data file) also runs alone as `python -m
prompt_tuning.cli.main`, so that its exit is the process's exit.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.recycling import support
from tests import backbone_forms
from tests.conftest import REPO_ROOT, files_digest, fixture_path
from tests.test_binaries import TINY_MODEL_GIN

OTHER = "0123456789abcdef"  # A backbone fingerprint no backbone here has.
RUN_FILES = {"train": "runs/prompt_finetune.gin", "eval": "runs/prompt_eval.gin",
             "infer": "runs/prompt_infer.gin"}


def _gin_argv(root, name, *extra, command="train", model_gin=None, checkpoint=None):
  return [command, f"--gin_file={model_gin or os.path.join(root, 'tiny_model.gin')}",
          f"--gin_file={RUN_FILES[command]}",
          f"--gin.MODEL_DIR='{_model_dir(root, name)}'",
          "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{checkpoint or fixture_path('t5x_tiny_checkpoint')}'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
          "--gin.BATCH_SIZE=4", *(["--gin.TRAIN_STEPS=1"] if command == "train" else []),
          *extra]


def _model_dir(root, name):
  return os.path.join(root, name, "model_dir")


def _case_dir(root, name):
  path = os.path.join(root, name)
  os.makedirs(path, exist_ok=True)
  return path


# name -> builder(root) -> (argv, words the error line holds, folder that must stay as it is).
CATALOG = {}


def case(name):
  def register(builder):
    CATALOG[name] = builder
    return builder
  return register


def flag_case(name, expected, *flags, **kwargs):
  """A case that is the tiny run with a few more flags (`_gin_argv`'s keywords too)."""
  CATALOG[name] = lambda root: (_gin_argv(root, name, *flags, **kwargs), expected, None)


@case("prompt_file_of_the_wrong_shape")
def _(root):
  return (_gin_argv(root, "prompt_file_of_the_wrong_shape", "--gin_file=prompts/from_file.gin",
                    f"--gin.PROMPT_FILE='{fixture_path('prompt_5x256.npy')}'"),
          ["prompt_5x256.npy has shape (5, 256)", "shape (4, 4)"], None)


@case("prompt_file_of_the_wrong_dtype")
def _(root):
  path = os.path.join(_case_dir(root, "prompt_file_of_the_wrong_dtype"), "words.npy")
  np.save(path, np.array([["a", "b", "c", "d"]] * 4))
  return (_gin_argv(root, "prompt_file_of_the_wrong_dtype", "--gin_file=prompts/from_file.gin",
                    f"--gin.PROMPT_FILE='{path}'"),
          ["holds dtype <U1; expected a float array"], None)


@case("prompt_file_holding_a_pickle")
def _(root):
  path = os.path.join(_case_dir(root, "prompt_file_holding_a_pickle"), "pickled.npy")
  np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  return (_gin_argv(root, "prompt_file_holding_a_pickle", "--gin_file=prompts/from_file.gin",
                    f"--gin.PROMPT_FILE='{path}'"), ["pickled objects are refused"], None)


@case("checkpoint_folder_missing")
def _(root):
  return (_gin_argv(root, "checkpoint_folder_missing",
                    checkpoint=os.path.join(root, "nowhere")),
          ["Checkpoint not found", "nowhere"], None)


@case("checkpoint_corrupt")
def _(root):
  folder = os.path.join(_case_dir(root, "checkpoint_corrupt"), "ckpt", "checkpoint_1")
  os.makedirs(folder)
  with open(os.path.join(folder, "checkpoint"), "wb") as f:
    f.write(b"\xc1 not msgpack")
  return (_gin_argv(root, "checkpoint_corrupt", checkpoint=folder),
          ["Corrupt T5X checkpoint file"], None)


@case("checkpoint_missing_parameters")
def _(root):
  model = os.path.join(_case_dir(root, "checkpoint_missing_parameters"), "deeper.gin")
  with open(model, "w") as f:
    f.write(TINY_MODEL_GIN + "T5Config.num_decoder_layers = 3\n")
  return (_gin_argv(root, "checkpoint_missing_parameters", model_gin=model),
          ["does not match the model", "missing: decoder/layers_2/"], None)


@case("hf_config_of_an_unsupported_architecture")
def _(root):
  folder = _case_dir(root, "hf_config_of_an_unsupported_architecture")
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, f)
  return ["inspect", folder], ["unsupported architecture", "gpt2"], None


flag_case("unknown_task_suggests_close_names",
          ["Unknown task or mixture 'synthetic_revers_bare'", "synthetic_reverse_bare"],
          "--gin.MIXTURE_OR_TASK_NAME='synthetic_revers_bare'")


flag_case("gin_file_not_found", ["gin file 'runs/prompt_finetuned.gin' not found"],
          "--gin_file=runs/prompt_finetuned.gin")


flag_case("unknown_gin_binding", ["learning_rate", "Bad gin configuration"],
          "--gin.train.learning_rate=0.3")


flag_case("prompt_longer_than_the_input_budget",
          ["Prompt length 4 + inputs length 16 = 20 exceeds"],
          "--gin.ChecksSpec.max_encoder_length=12")


flag_case("empty_dataset_split", ["yielded no batch", "pt_test_empty"],
          "--gin.MIXTURE_OR_TASK_NAME='pt_test_empty'")


@case("vocabulary_size_mismatch")
def _(root):
  # The quickstart's byte-vocabulary model (384 rows) cannot read T5's 32,000 pieces.
  model = os.path.join(_case_dir(root, "vocabulary_size_mismatch"), "bytes_model.gin")
  with open(model, "w") as f:
    f.write("import tests.tiny_tasks\ninclude 'models/synthetic_tiny.gin'\n"
            "include 'prompts/soft_prompt.gin'\nPROMPT_LENGTH = 4\n")
  return (_gin_argv(root, "vocabulary_size_mismatch", model_gin=model),
          ["vocabulary of 32000 ids", "384 rows"], None)


flag_case("a_config_missing_its_prompt_file", ["has no value", "prompts/soft_prompt.gin"],
          model_gin="models/synthetic_tiny.gin")


@case("negative_input_length")
def _(root):
  return (_gin_argv(root, "negative_input_length",
                    "--gin.TASK_FEATURE_LENGTHS={'inputs': -5, 'targets': 4}"),
          ["TASK_FEATURE_LENGTHS['inputs'] must be a positive integer; got -5"], None)


@case("model_dir_under_a_plain_file")
def _(root):
  plain = os.path.join(_case_dir(root, "model_dir_under_a_plain_file"), "plain")
  with open(plain, "w") as f:
    f.write("not a folder")
  argv = _gin_argv(root, "model_dir_under_a_plain_file")
  argv = [a if not a.startswith("--gin.MODEL_DIR=") else f"--gin.MODEL_DIR='{plain}/run'"
          for a in argv]
  return argv, [f"is under {plain}, a file; expected a folder"], None


flag_case("warmup_longer_than_the_run",
          ["LearningRateSchedule.warmup_steps=5 exceeds TRAIN_STEPS=1"],
          "--gin.prompt_tuning_adafactor.learning_rate=@LearningRateSchedule()",
          "--gin.LearningRateSchedule.factors='constant * linear_warmup'",
          "--gin.LearningRateSchedule.warmup_steps=5")
flag_case("microbatches_not_dividing_the_batch",
          ["NUM_MICROBATCHES=3 does not divide the per-device batch 4"],
          "--gin.NUM_MICROBATCHES=3")
flag_case("eval_period_zero",
          ["EVAL_PERIOD (EvalSpec.period) must be a positive integer", "got 0"],
          "--gin.EVAL_PERIOD=0")
flag_case("evaluation_without_a_validation_split",
          ["EVAL_PERIOD is set but task pt_test_sentiment has no 'dev' split",
           "['train', 'validation']"],
          "--gin.EVAL_PERIOD=1", "--gin.EvalSpec.split='dev'")
flag_case("unknown_best_metric",
          ["BEST_METRIC 'f1' is not a metric of the task; its metrics are ['accuracy']"],
          "--gin.EVAL_PERIOD=1", "--gin.BEST_METRIC='f1'")
flag_case("max_decode_length_zero",
          ["DecodingConfig.max_decode_length must be a positive integer; got 0"],
          "--gin.DecodingConfig.max_decode_length=0", command="infer")


def _prompt_file(folder, name="p.npy", width=4, backbone=None):
  from prompt_tuning.prompts import provenance
  path = os.path.join(folder, name)
  value = np.random.RandomState(0).uniform(-1, 1, (5, width)).astype(np.float32)
  np.save(path, value)
  if backbone:
    provenance.write(path, provenance.record(backbone, value))
  return path


def _adapter(root, name, sub, config):
  """(the case's folder, an adapter folder in it holding `config` as adapter_config.json)."""
  folder = _case_dir(root, name)
  adapter = os.path.join(folder, sub)
  os.makedirs(adapter)
  with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
    json.dump(config, f)
  return folder, adapter


@case("export_peft_over_an_existing_adapter")
def _(root):
  folder, adapter = _adapter(root, "export_peft_over_an_existing_adapter", "adapter",
                             {"peft_type": "PROMPT_TUNING", "note": "a user's earlier export"})
  return (["export-peft", f"--prompt={_prompt_file(folder)}",
           f"--checkpoint={fixture_path('t5x_tiny_checkpoint')}", f"--out={adapter}"],
          [f"{adapter} exists; pass --overwrite"], adapter)


@case("peft_adapter_of_another_method")
def _(root):
  folder, lora = _adapter(root, "peft_adapter_of_another_method", "lora",
                          {"peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": 2})
  return (["import-peft", f"--adapter={lora}",
           f"--checkpoint={fixture_path('t5x_tiny_checkpoint')}",
           f"--out={os.path.join(folder, 'x.npy')}"],
          ["is a PEFT LORA adapter", "PROMPT_TUNING"], folder)


@case("peft_prompt_of_another_width")
def _(root):
  folder = _case_dir(root, "peft_prompt_of_another_width")
  return (["export-peft", f"--prompt={_prompt_file(folder, width=24)}",
           f"--checkpoint={fixture_path('t5x_tiny_checkpoint')}",
           f"--out={os.path.join(folder, 'out')}"],
          ["shape [5, 24]", "has width 4", "expected [P, 4]"], None)


@case("prompt_of_another_backbone")
def _(root):
  folder = _case_dir(root, "prompt_of_another_backbone")
  return (["export-peft", f"--prompt={_prompt_file(folder, backbone=OTHER)}",
           f"--checkpoint={fixture_path('t5x_tiny_checkpoint')}",
           f"--out={os.path.join(folder, 'out')}"], [OTHER, "prompt-tuning recycle"], None)


# --- issue 32: damaged backbones, runs that do not fit, another run's MODEL_DIR ---------

def _damage_case(damage):
  @case(f"backbone_{damage}")
  def _(root):
    forms = backbone_forms.healthy(os.path.join(root, "_backbones"))
    copy, victim = backbone_forms.damaged(forms, damage, _case_dir(root, f"backbone_{damage}"))
    words = backbone_forms.DAMAGES[damage][2]
    return (_gin_argv(root, f"backbone_{damage}", checkpoint=copy),
            ["Damaged checkpoint", victim, *words], None)


for _damage in backbone_forms.DAMAGES:
  _damage_case(_damage)


flag_case("train_that_cannot_fit_in_memory",
          ["The train step needs about", "is available", "BATCH_SIZE 4",
           "inputs 16 + PROMPT_LENGTH 100000", "--gin.ALLOW_OVERSUBSCRIBE=True"],
          "--gin.PROMPT_LENGTH=100000")


flag_case("eval_that_cannot_fit_in_memory",
          ["The evaluation needs about", "PROMPT_LENGTH 100000", "--gin.ALLOW_OVERSUBSCRIBE=True"],
          "--gin.PROMPT_LENGTH=100000", "--gin.RESTORE_CHECKPOINT=False", command="eval")


def another_runs_model_dir(model_dir, prompt_length=10, width=4):
  """MODEL_DIR as a finished prompt run of another PROMPT_LENGTH leaves it (step 2)."""
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  from prompt_tuning.train import optimizers
  if os.path.isdir(model_dir):
    return model_dir
  trainable = {"encoder_prompt": {"prompt": np.ones((prompt_length, width), np.float32)}}
  store = checkpoints_lib.CheckpointStore(model_dir)
  store.save(2, trainable, optimizers.prompt_tuning_adafactor().init(trainable),
             data_position=2)
  store.close()
  checkpoints_lib.export_prompts(model_dir, 2, trainable)
  return model_dir


def _other_run_case(command):
  name = f"{command}_into_the_model_dir_of_another_run"

  @case(name)
  def _(root):
    model_dir = another_runs_model_dir(_model_dir(root, name))
    return (_gin_argv(root, name, "--gin.PROMPT_LENGTH=12", command=command),
            [f"MODEL_DIR {model_dir} holds another run's checkpoints",
             "encoder_prompt/prompt of shape (10, 4) (this run's: (12, 4))",
             "Use another MODEL_DIR", "PROMPT_LENGTH=10"], model_dir)


for _command in ("train", "eval"):
  _other_run_case(_command)


# serve sets up its own logging for the process: its cases come last.
@case("serve_that_cannot_fit_in_memory")
def _(root):
  return (["serve", fixture_path("t5x_tiny_checkpoint"), "--prompt_length=100000",
           "--no_warmup"], ["The server needs about", "PROMPT_LENGTH 100000",
                            "--allow_oversubscribe"], None)


@case("serve_of_a_missing_checkpoint")
def _(root):
  return (["serve", os.path.join(root, "nowhere"), "--prompt_length=4", "--no_warmup"],
          ["Checkpoint not found", "nowhere"], None)


# --- running the catalog ---------------------------------------------------------------

@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
  fixture_path("t5_spm.model")
  root = str(tmp_path_factory.mktemp("catalog"))
  with open(os.path.join(root, "tiny_model.gin"), "w") as f:
    f.write(TINY_MODEL_GIN)
  cases = {name: build(root) for name, build in CATALOG.items()}
  kept = {name: files_digest(keep) for name, (_, _, keep) in cases.items() if keep}
  cases_file, results_file = os.path.join(root, "cases.json"), os.path.join(root, "results.json")
  with open(cases_file, "w") as f:
    json.dump([dict(name=name, argv=argv) for name, (argv, _, _) in cases.items()], f)
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  process = subprocess.run([sys.executable, "-m", "tests.binary_runner", cases_file,
                            results_file], cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=900)
  assert process.returncode == 0, process.stderr[-3000:]
  with open(results_file) as f:
    results = json.load(f)
  return root, cases, kept, results, process


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(catalog, name):
  root, cases, kept, results, _ = catalog
  argv, words, keep = cases[name]
  code, output = results[name]["code"], results[name]["output"]
  assert "Traceback" not in output, output[-3000:]
  assert code == 2, output[-3000:]
  lines = [line for line in output.splitlines() if line.startswith("prompt-tuning")]
  assert len(lines) == 1, output[-3000:]
  for word in words:
    assert word in lines[0], (word, lines[0])
  if argv[0] == "inspect":  # Nothing but the line.
    assert output.strip() == lines[0], output
  if keep:
    assert files_digest(keep) == kept[name], f"{keep} changed"
  if argv[0] in RUN_FILES and not keep:
    assert not os.path.exists(_model_dir(root, name)), os.listdir(_model_dir(root, name))


def test_no_traceback_while_the_binary_exits(catalog):
  process = catalog[-1]
  assert "Traceback" not in process.stdout + process.stderr, process.stderr[-3000:]


def test_a_backbone_missing_a_data_file_alone_in_its_process(catalog):
  """The issue's case as a user ran it: an OCDBT backbone with one file under d/ deleted."""
  root = catalog[0]
  forms = backbone_forms.healthy(os.path.join(root, "_backbones"))
  copy, victim = backbone_forms.damaged(forms, "ocdbt_data_missing",
                                        _case_dir(root, "alone"))
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  result = subprocess.run([sys.executable, "-m", "prompt_tuning.cli.main",
                           *_gin_argv(root, "alone", checkpoint=copy)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  output = result.stdout + result.stderr
  assert result.returncode == 2 and "Traceback" not in output, output[-3000:]
  lines = [line for line in output.splitlines() if line.startswith("prompt-tuning")]
  assert len(lines) == 1 and f"{victim} is missing" in lines[0], output[-3000:]
  assert not os.path.exists(_model_dir(root, "alone"))


def test_recycling_support_id_out_of_range():
  ids = support.load_filter(fixture_path("english_vocab_filter.json"))
  assert len(ids) == 16779
  with pytest.raises(ValueError, match=r"out of range.*\[384, 32128\] rows.*\[0, 384\)"):
    support.support_ids([384, 32128], ids)
  chosen = support.support_ids([32128, 32128], ids)  # the paper's skip 1000, take 4000
  assert chosen.tolist() == ids[1000:5000]
