"""Issue 31, point 2: the vocabulary comes from the checkpoint.

This project's backbones record theirs in config.json (bytes, or a
SentencePiece model copied beside them); a Hugging Face folder's spiece.model
is used; a vocabulary out of reach is one line naming the binding to set; the
synthetic model files imply bytes; a binding that contradicts the recorded
vocabulary is an error naming both.
"""

import json
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest

from prompt_tuning import backbones
from prompt_tuning.cli import gin as gin_utils
from prompt_tuning.readers import config as config_lib
from prompt_tuning.readers import vocabulary as vocabulary_lib
from prompt_tuning.serving import cli as serving_cli
from prompt_tuning.tasks import vocabularies
from tests.conftest import REPO_ROOT, fixture_path


@pytest.fixture(autouse=True)
def fresh_gin_and_vocabulary(monkeypatch):
  """Each test parses its own gin; the task vocabulary it configures is undone after."""
  monkeypatch.setattr(vocabularies, "_config", None)
  monkeypatch.delenv("PT_TASK_VOCABULARY", raising=False)
  gin.clear_config()
  yield
  gin.clear_config()


def _byte_backbone(root) -> str:
  """A backbone folder as backbones.pretrain writes its record (no weights needed here)."""
  folder = str(root / "synthetic_tiny")
  os.makedirs(os.path.join(folder, "checkpoint_3"))
  config_lib.write_record(folder, backbones.backbone_config("tiny"))
  vocabulary_lib.record(folder, "byte")
  return folder


def _hf_folder(root, spm=True) -> str:
  """A Hugging Face T5 folder's metadata (its weights are not read here)."""
  folder = root / "hf_t5"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 4}))
  if spm:
    shutil.copyfile(fixture_path("t5_spm.model"), folder / "spiece.model")
  return str(folder)


def _bind_from(checkpoint, *bindings):
  gin_utils.parse_gin([], [f"INITIAL_CHECKPOINT_PATH = {checkpoint!r}", *bindings])
  return gin_utils.bind_checkpoint_vocabulary()


def test_backbones_record_bytes_or_a_copied_sentencepiece_model(tmp_path):
  byte = _byte_backbone(tmp_path)
  with open(os.path.join(byte, "config.json")) as f:
    assert json.load(f)["vocabulary"] == {"kind": "byte"}
  for path in (byte, os.path.join(byte, "checkpoint_3")):  # The run folder is looked up.
    assert vocabulary_lib.recorded(path).kind == "byte"
  # Rewriting the architecture keeps the vocabulary.
  config_lib.write_record(byte, backbones.backbone_config("tiny"))
  assert vocabulary_lib.recorded(byte).kind == "byte"
  # A SentencePiece backbone (the real-language miniature): the model is copied beside it,
  # so the folder is complete on its own.
  spm_backbone = str(tmp_path / "miniature")
  os.makedirs(spm_backbone)
  config_lib.write_record(spm_backbone, backbones.backbone_config("tiny"))
  vocabulary_lib.record(spm_backbone, fixture_path("t5_spm.model"))
  found = vocabulary_lib.recorded(spm_backbone)
  assert (found.kind, found.path) == ("sentencepiece",
                                      os.path.join(spm_backbone, vocabulary_lib.SPM_FILE))
  with open(found.path, "rb") as a, open(fixture_path("t5_spm.model"), "rb") as b:
    assert a.read() == b.read()
  moved = str(tmp_path / "moved")
  shutil.move(spm_backbone, moved)  # The record is relative: the folder moves whole.
  assert vocabulary_lib.recorded(moved).path == os.path.join(moved, vocabulary_lib.SPM_FILE)
  # A bare T5X checkpoint records nothing; a T5X run's config.gin records its model file.
  bare = tmp_path / "bare"
  bare.mkdir()
  assert vocabulary_lib.recorded(str(bare)) is None
  (bare / "config.gin").write_text(
      "seqio.SentencePieceVocabulary.sentencepiece_model_file = '/data/t5.model'\n")
  assert vocabulary_lib.recorded(str(bare)) == vocabulary_lib.Vocabulary(
      "sentencepiece", "/data/t5.model", str(bare / "config.gin"))


def test_a_cached_backbone_without_a_record_gets_bytes(tmp_path):
  cfg = backbones.quickstart_pretrain_config(steps=2)
  out = backbones.backbone_path(str(tmp_path), cfg)
  os.makedirs(out)
  config_lib.write_record(out, backbones.backbone_config(cfg.size))  # As written before.
  open(os.path.join(out, "DONE"), "w").close()
  assert vocabulary_lib.recorded(out) is None
  assert backbones.pretrain(cfg, cache_dir=str(tmp_path)) == out  # Reused, not trained.
  assert vocabulary_lib.recorded(out).kind == "byte"


def test_the_binaries_take_the_recorded_vocabulary(tmp_path):
  byte = _byte_backbone(tmp_path)
  assert _bind_from(byte) == os.path.join(byte, "config.json")
  gin_utils.apply_task_vocabulary()
  assert vocabularies.current_config().kind == "byte"
  gin.clear_config()
  hf = _hf_folder(tmp_path)
  assert _bind_from(hf) == os.path.join(hf, "spiece.model")
  gin_utils.apply_task_vocabulary()
  assert vocabularies.current_config() == vocabularies.TaskVocabularyConfig(
      "sentencepiece", os.path.join(hf, "spiece.model"))
  assert list(vocabularies.TASK_VOCABULARY.encode("The movie was great!")) == [
      37, 1974, 47, 248, 55]
  # serve takes it too, and keeps bytes where nothing is recorded.
  assert serving_cli.vocabulary_spec(hf, None) == os.path.join(hf, "spiece.model")
  assert serving_cli.vocabulary_spec(byte, None) == "byte"
  assert serving_cli.vocabulary_spec(str(tmp_path / "nothing_recorded"), None) == "byte"
  # A Hugging Face folder without spiece.model records nothing: the defaults stay.
  gin.clear_config()
  bare_hf = tmp_path / "bare_hf"
  bare_hf.mkdir()
  (bare_hf / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 4}))
  assert _bind_from(str(bare_hf)) == ""


def test_a_binding_that_contradicts_the_recorded_vocabulary_names_both(tmp_path):
  byte = _byte_backbone(tmp_path)
  with pytest.raises(ValueError, match=r"binds the vocabulary gs://.* but "
                     rf"{os.path.join(byte, 'config.json')} records byte"):
    _bind_from(byte, "TaskVocabularyConfig.kind = 't5'")
  gin.clear_config()
  hf = _hf_folder(tmp_path)
  other = tmp_path / "other.model"
  other.write_bytes(b"not the same model")
  with pytest.raises(ValueError, match=rf"binds the vocabulary {other} but .*records "
                     rf"{os.path.join(hf, 'spiece.model')}:"):
    _bind_from(hf, f"TaskVocabularyConfig.path = '{other}'")
  gin.clear_config()
  with pytest.raises(ValueError, match="PT_TASK_VOCABULARY names the vocabulary byte"):
    os.environ["PT_TASK_VOCABULARY"] = "byte"
    try:
      _bind_from(hf)
    finally:
      del os.environ["PT_TASK_VOCABULARY"]
  gin.clear_config()
  # A copy of the recorded model is the same vocabulary; so are agreeing bindings.
  copy = tmp_path / "copy.model"
  shutil.copyfile(fixture_path("t5_spm.model"), copy)
  assert _bind_from(hf, f"TaskVocabularyConfig.path = '{copy}'")
  gin.clear_config()
  assert _bind_from(byte, "TaskVocabularyConfig.kind = 'byte'")
  # serve's --vocabulary likewise.
  with pytest.raises(ValueError, match=rf"--vocabulary byte but {hf}/spiece.model records "
                     rf"the vocabulary {hf}/spiece.model"):
    serving_cli.vocabulary_spec(hf, "byte")
  with pytest.raises(ValueError, match=rf"--vocabulary {copy} but .*config.json records the "
                     "vocabulary byte"):
    serving_cli.vocabulary_spec(byte, str(copy))
  assert serving_cli.vocabulary_spec(hf, str(copy)) == str(copy)


def test_an_unreachable_vocabulary_is_one_line_naming_the_binding(tmp_path, monkeypatch):
  import socket

  def offline(*args, **kwargs):
    raise socket.gaierror(-2, "Name or service not known")

  monkeypatch.setattr(socket, "getaddrinfo", offline)
  for config, why in ((vocabularies.TaskVocabularyConfig(), "no network"),
                      (vocabularies.TaskVocabularyConfig(path="/no/such.model"),
                       "no such file")):
    with pytest.raises(FileNotFoundError) as e:
      config.build()
    message = str(e.value)
    assert why in message and "--gin.TaskVocabularyConfig.path=" in message
    assert "\n" not in message
  # Through `train`, on a T5X checkpoint that records no vocabulary and a file task that
  # uses the task vocabulary: exit 2 and one line, before the backbone is read.
  data = tmp_path / "train.jsonl"
  data.write_text('{"text": "good", "label": "positive"}\n')
  from prompt_tuning.cli import main as main_lib
  argv = ["train", "--gin_file=prompts/soft_prompt.gin", "--gin_file=runs/prompt_finetune.gin",
          "--gin_file=tasks/local_file.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
          "--gin.file_task.name='pt_offline_vocabulary'",
          f"--gin.file_task.splits={{'train': '{data}'}}",
          "--gin.file_task.input_template='{text}'", "--gin.file_task.target_field='label'",
          "--gin.TRAIN_STEPS=1", "--gin.PROMPT_LENGTH=2"]
  import io
  import contextlib
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    assert main_lib.main(argv) == 2
  lines = [line for line in err.getvalue().splitlines() if "error" in line]
  assert len(lines) == 1 and "TaskVocabularyConfig.path" in lines[0], err.getvalue()[-2000:]
  assert "gs://t5-data" in lines[0] and "no network" in lines[0]


def test_serve_says_an_unreadable_vocabulary_before_tensorflow_is_imported(tmp_path):
  backbone = str(tmp_path / "miniature")
  os.makedirs(backbone)
  config_lib.write_record(backbone, backbones.backbone_config("tiny"))
  vocabulary_lib.record(backbone, fixture_path("t5_spm.model"))
  os.remove(os.path.join(backbone, vocabulary_lib.SPM_FILE))
  script = ("import sys\nfrom prompt_tuning.serving import cli\n"
            f"try:\n  cli.vocabulary_spec({backbone!r}, None)\n"
            "except FileNotFoundError as e:\n  print(e)\n"
            "print('tensorflow imported:', 'tensorflow' in sys.modules)\n")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        cwd=REPO_ROOT, timeout=300)
  lines = done.stdout.splitlines()
  assert len(lines) == 2 and "give --vocabulary /local/spm.model" in lines[0], done
  assert lines[1] == "tensorflow imported: False"


def test_synthetic_model_files_imply_bytes_and_the_initializer_names_its_binding():
  gin_utils.parse_gin(["models/synthetic_tiny.gin"])
  gin_utils.apply_task_vocabulary()
  assert vocabularies.current_config().kind == "byte"
  from prompt_tuning.prompts import initializers
  table = np.zeros((384, 4), np.float32)  # The synthetic backbones' byte table.
  init = initializers.sampled_vocab(embeddings=table)
  import jax
  with pytest.raises(ValueError, match=r"first_n=5000 must be in \[1, 384\].*bind "
                     r"prompt_init\.sampled_vocab\.first_n"):
    init(jax.random.PRNGKey(0), (2, 4))
  assert initializers.sampled_vocab(embeddings=table, first_n=259)(
      jax.random.PRNGKey(0), (2, 4)).shape == (2, 4)


def test_decode_takes_the_recorded_sentencepiece_model(tmp_path, capsys):
  from prompt_tuning.cli import main as main_lib
  hf = _hf_folder(tmp_path)
  other = tmp_path / "other.model"
  other.write_bytes(b"not the same model")
  cases = ((["decode", fixture_path("t5x_tiny_checkpoint"), "--input=x"],
            "records no vocabulary: give --spm_model"),
           (["decode", _byte_backbone(tmp_path), "--input=x"], "uses the byte vocabulary"),
           (["decode", hf, f"--spm_model={other}", "--input=x"],
            f"--spm_model {other} but {hf}/spiece.model records"))
  for argv, said in cases:
    assert main_lib.main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
