"""The vocabulary the benchmark tasks tokenize with, chosen at run time.

Tasks are registered when `prompt_tuning.tasks` is imported, before any gin
file is parsed, so their features hold a `TaskVocabulary`: a seqio vocabulary
that forwards every call to the one currently configured. The choice is:

  kind='t5'     T5's SentencePiece model (T5X's default path, or `path`)
  kind='mt5'    mT5's SentencePiece model (its default path, or `path`)
  kind='byte'   seqio's byte-level vocabulary (ByT5), no file
  kind='sentencepiece'  any SentencePiece model at `path`

Set it from gin with `TaskVocabularyConfig.kind` / `.path` (the binaries apply
it after parsing), from Python with `configure(...)`, or from the environment
with PT_TASK_VOCABULARY (a kind, or a path to a .model file).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import seqio

from prompt_tuning import registry

# T5X's default vocabulary for T5 1.0 / 1.1 (32,000 pieces + 100 sentinels).
T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
# mT5 / umT5's (250,000 pieces + 100 sentinels).
MT5_SPM_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
KINDS = ("t5", "mt5", "byte", "sentencepiece")


@registry.configurable
@dataclasses.dataclass(frozen=True)
class TaskVocabularyConfig:
  """Which vocabulary the registered benchmark tasks use."""
  kind: str = "t5"
  path: Optional[str] = None

  def build(self) -> seqio.Vocabulary:
    if self.kind not in KINDS:
      raise ValueError(f"Unknown task vocabulary kind {self.kind!r}; expected one of {KINDS}")
    if self.kind == "byte":
      if self.path:
        raise ValueError("The byte vocabulary takes no path")
      return seqio.ByteVocabulary()
    path = self.path or default_path(self.kind)
    if not path:
      raise ValueError("kind='sentencepiece' needs a path to a SentencePiece .model file")
    check_reachable(path, self.kind)
    return seqio.SentencePieceVocabulary(path)


def default_path(kind: str) -> Optional[str]:
  """T5X's SentencePiece model for kind 't5' or 'mt5' (None for the others)."""
  return {"t5": T5_SPM_PATH, "mt5": MT5_SPM_PATH}.get(kind)


class UnreachableVocabularyError(FileNotFoundError):
  """The task vocabulary's SentencePiece model cannot be read (one line naming the binding)."""


# Remote stores by scheme: the host a SentencePiece model is read from.
_HOSTS = {"gs": "storage.googleapis.com", "s3": "s3.amazonaws.com"}


def unreachable(path: str) -> str:
  """Why a SentencePiece model cannot be read ("" when, at a quick look, it can).

  A remote path is checked by resolving its store's host name: offline, that
  fails at once, where TensorFlow's reader would retry and end in a long
  traceback.
  """
  if "://" in path:
    host = _HOSTS.get(path.split("://", 1)[0])
    if host:
      import socket
      try:
        socket.getaddrinfo(host, 443)
      except OSError:
        return f"{host} cannot be resolved: no network"
    return ""
  return "" if os.path.isfile(path) else "no such file"


def check_reachable(path: str, kind: str = "sentencepiece",
                    binding: str = "TaskVocabularyConfig.path") -> None:
  """Raises UnreachableVocabularyError, one line naming `binding`, for a model out of reach."""
  why = unreachable(path)
  if why:
    raise UnreachableVocabularyError(
        f"the task vocabulary (kind={kind!r}) {path} cannot be read ({why}): set "
        f"--gin.{binding}=\"'/local/spm.model'\" (a SentencePiece model, e.g. a Hugging Face "
        "T5 folder's spiece.model) or --gin.TaskVocabularyConfig.kind=\"'byte'\"")


def _from_environment() -> TaskVocabularyConfig:
  value = os.environ.get("PT_TASK_VOCABULARY", "")
  if not value:
    return TaskVocabularyConfig()
  if value in KINDS:
    return TaskVocabularyConfig(kind=value)
  return TaskVocabularyConfig(kind="sentencepiece", path=value)


_config: Optional[TaskVocabularyConfig] = None
_built: dict[TaskVocabularyConfig, seqio.Vocabulary] = {}


def configure(config: Optional[TaskVocabularyConfig] = None, **kwargs) -> TaskVocabularyConfig:
  """Chooses the task vocabulary: `configure(kind='byte')`, or a config object."""
  global _config
  config = config or TaskVocabularyConfig(**kwargs)
  if config.kind not in KINDS:
    raise ValueError(f"Unknown task vocabulary kind {config.kind!r}; expected one of {KINDS}")
  _config = config
  return config


def current_config() -> TaskVocabularyConfig:
  return _config if _config is not None else _from_environment()


def current() -> seqio.Vocabulary:
  """The configured vocabulary (built once per configuration)."""
  config = current_config()
  if config not in _built:
    _built[config] = config.build()
  return _built[config]


class TaskVocabulary(seqio.Vocabulary):
  """Forwards to `current()`, so tasks follow the configured vocabulary."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def _target(self) -> seqio.Vocabulary:
    return current()

  @property
  def eos_id(self):
    return self._target.eos_id

  @property
  def pad_id(self):
    return self._target.pad_id

  @property
  def unk_id(self):
    return self._target.unk_id

  @property
  def extra_ids(self):
    return self._target.extra_ids

  @property
  def _base_vocab_size(self):
    return self._target._base_vocab_size  # pylint: disable=protected-access

  @property
  def vocab_size(self):
    return self._target.vocab_size

  def encode(self, s):
    return self._target.encode(s)

  def decode(self, ids):
    return self._target.decode(ids)

  def encode_tf(self, s):
    return self._target.encode_tf(s)

  def decode_tf(self, ids):
    return self._target.decode_tf(ids)

  def _encode(self, s):
    return self._target._encode(s)  # pylint: disable=protected-access

  def _decode(self, ids):
    return self._target._decode(ids)  # pylint: disable=protected-access

  def _encode_tf(self, s):
    return self._target._encode_tf(s)  # pylint: disable=protected-access

  def _decode_tf(self, ids):
    return self._target._decode_tf(ids)  # pylint: disable=protected-access

  def __eq__(self, other):
    return isinstance(other, TaskVocabulary) or other == self._target

  def __hash__(self):
    return hash(TaskVocabulary)

  def __repr__(self):
    return f"TaskVocabulary({current_config()})"


TASK_VOCABULARY = TaskVocabulary()
