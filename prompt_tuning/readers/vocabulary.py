"""The vocabulary recorded with a checkpoint, and recording one.

A checkpoint's token ids mean nothing without its vocabulary, so the binaries
take it from what was written with the checkpoint, first found wins:

- this project's backbones: the `"vocabulary"` entry of their `config.json`
  (readers/config.py): `{"kind": "byte"}`, or `{"kind": "sentencepiece",
  "path": "spiece.model"}` with the model copied beside it (`record`);
- a Hugging Face folder: its `spiece.model` (T5 and mT5 snapshots ship one);
- a run's `config.gin` (this project's MODEL_DIR, or a T5X run):
  `TaskVocabularyConfig.kind` / `.path`, or T5X's
  `seqio.SentencePieceVocabulary.sentencepiece_model_file`.

A T5X checkpoint with none of them records no vocabulary: the binaries keep
their defaults (`TaskVocabularyConfig`, T5's `gs://` model; `serve`, bytes).

    record(folder, "byte")                       # a byte-vocabulary backbone
    record(folder, "/data/my_spm.model")         # copied to folder/spiece.model
    recorded(checkpoint) -> Vocabulary | None
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import re
import shutil
from typing import Optional

from prompt_tuning.readers import config as config_lib

BYTE = "byte"
SENTENCEPIECE = "sentencepiece"
# Hugging Face's name for a T5 folder's SentencePiece model; this project's
# backbones copy theirs under the same name.
SPM_FILE = "spiece.model"


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """A vocabulary as TaskVocabularyConfig takes it, and the file that records it.

  Attributes:
    kind: 'byte', 'sentencepiece', or 't5' / 'mt5' (T5X's default models).
    path: the SentencePiece model (absolute, or a gs:// address); None for
      'byte' and for 't5' / 'mt5' without a path.
    source: the file that records it (config.json, config.gin, spiece.model).
  """
  kind: str
  path: Optional[str] = None
  source: str = ""

  def describe(self) -> str:
    return self.path or self.kind


def record(folder: str, vocabulary: str) -> str:
  """Records a backbone's vocabulary in `folder/config.json`; returns that file.

  Args:
    folder: the backbone folder (where `readers.config.write_record` writes
      config.json; an existing record keeps its other fields).
    vocabulary: "byte", or a SentencePiece .model file, copied to
      `folder/spiece.model` so the backbone folder is complete on its own.
  """
  os.makedirs(folder, exist_ok=True)
  if vocabulary == BYTE:
    entry = {"kind": BYTE}
  else:
    if not os.path.isfile(vocabulary):
      raise FileNotFoundError(f"SentencePiece model {vocabulary} not found: record 'byte' or "
                              "an existing .model file")
    target = os.path.join(folder, SPM_FILE)
    if os.path.abspath(vocabulary) != os.path.abspath(target):
      shutil.copyfile(vocabulary, target + ".tmp")
      os.replace(target + ".tmp", target)
    entry = {"kind": SENTENCEPIECE, "path": SPM_FILE}
  path = os.path.join(folder, config_lib.RECORD_FILE)
  current = {"format": config_lib.RECORD_FORMAT}
  if os.path.isfile(path):
    with open(path) as f:
      current = json.load(f)
    if not (isinstance(current, dict) and config_lib.is_record(current)):
      raise ValueError(f"{path} is not this project's config record (a Hugging Face "
                       "config.json?); a Hugging Face folder's vocabulary is its spiece.model")
  current[config_lib.VOCABULARY_KEY] = entry
  with open(path + ".tmp", "w") as f:
    f.write(json.dumps(current, indent=1))
  os.replace(path + ".tmp", path)
  return path


def recorded(path: str) -> Optional[Vocabulary]:
  """The vocabulary recorded with a checkpoint (see the module docstring); None if none."""
  from prompt_tuning import readers
  if readers.is_hf_folder(path):
    spm = os.path.join(path, SPM_FILE)
    return Vocabulary(SENTENCEPIECE, os.path.abspath(spm), spm) if os.path.isfile(spm) else None
  for folder in config_lib._folders_up(path):  # pylint: disable=protected-access
    for name, read in ((config_lib.RECORD_FILE, _from_json),
                       (config_lib.LEGACY_RECORD_FILE, _from_json),
                       (config_lib.RUN_CONFIG_FILE, _from_gin)):
      candidate = os.path.join(folder, name)
      if os.path.isfile(candidate):
        found = read(candidate)
        if found is not None:
          return found
  return None


def _from_json(path: str) -> Optional[Vocabulary]:
  try:
    with open(path) as f:
      entry = json.load(f).get(config_lib.VOCABULARY_KEY)
  except (OSError, ValueError, AttributeError):  # Not a record: the config reader says so.
    return None
  if not isinstance(entry, dict) or "kind" not in entry:
    return None
  spm = entry.get("path")
  if spm and "://" not in spm and not os.path.isabs(spm):
    spm = os.path.join(os.path.dirname(os.path.abspath(path)), spm)
  return Vocabulary(entry["kind"], spm, path)


_GIN_VOCABULARY = re.compile(
    r"^\s*(?:[\w.]+\.)?(TaskVocabularyConfig\.(?:kind|path)|SentencePieceVocabulary\."
    r"sentencepiece_model_file)\s*=\s*(.+?)\s*$")


def _from_gin(path: str) -> Optional[Vocabulary]:
  """TaskVocabularyConfig's (or T5X's SentencePieceVocabulary's) literal bindings."""
  found = {}
  with open(path) as f:
    for line in f:
      m = _GIN_VOCABULARY.match(line)
      if not m:
        continue
      try:
        value = ast.literal_eval(m[2])
      except (ValueError, SyntaxError):  # A macro or a reference: not a recorded value.
        continue
      found[m[1].rsplit(".", 1)[-1]] = value
  spm = found.get("path") or found.get("sentencepiece_model_file")
  kind = found.get("kind") or (SENTENCEPIECE if spm else None)
  if not isinstance(kind, str):
    return None
  return Vocabulary(kind, spm if isinstance(spm, str) else None, path)


def same(a: Vocabulary, b: Vocabulary) -> bool:
  """Whether two vocabularies are one: both bytes, or one model (same path or same bytes).

  't5' / 'mt5' without a path are T5X's default models: give their path to
  compare them with a file.
  """
  if BYTE in (a.kind, b.kind):
    return a.kind == b.kind
  if (a.path or a.kind) == (b.path or b.kind):
    return True
  if a.path and b.path and os.path.isfile(a.path) and os.path.isfile(b.path):
    return _digest(a.path) == _digest(b.path)
  return False


def _digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()
