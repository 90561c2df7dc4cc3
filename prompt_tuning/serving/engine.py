"""The model side of the server: one frozen T5, a bank of swappable prompts, compiled steps.

Prompts are data, not parameters baked into a program: the compiled generate
and score functions take the whole prompt bank [N, P, H] as an argument and
each example's row index as another, so adding, replacing or removing a
prompt of the known [P, H] shape only changes an input array and never
recompiles. Programs are compiled ahead of time, one per (batch bucket,
input-length bucket[, target bucket], decoding options), and kept in a table
whose size is the compile count.

Shape key: B batch (rows), L input length, T target length, N bank rows,
P prompt length, H model width.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any, Callable, Hashable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import multi_task
from prompt_tuning import trees as tree_lib

EOS_ID = 1


class ServingError(Exception):
  """A request the server refuses; `status` and `code` become the HTTP error."""
  status = 400
  code = "bad_request"

  def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None,
               param: Optional[str] = None):
    super().__init__(message)
    self.status = status or self.status
    self.code = code or self.code
    self.param = param  # The request field at fault, where one is (OpenAI's error shape).


class UnknownPrompt(ServingError):
  status, code = 404, "unknown_prompt"


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Compiled shapes and the bank's capacity.

  Attributes:
    capacity: N, bank rows (how many prompts can be loaded at once).
    batch_buckets: row counts a batch is padded up to; the largest is the
      most rows one forward pass takes.
    length_buckets: input lengths (tokens, EOS included) inputs are padded
      up to; the largest is the input budget.
    target_buckets: candidate lengths for scoring (EOS included).
    seed: sampling seed (each batch folds in its own counter).
  """
  capacity: int = 64
  batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
  length_buckets: tuple[int, ...] = (16, 32, 64, 128)
  target_buckets: tuple[int, ...] = (8, 16, 32)
  seed: int = 0

  def __post_init__(self):
    for name in ("batch_buckets", "length_buckets", "target_buckets"):
      value = tuple(sorted(int(v) for v in getattr(self, name)))
      if not value or value[0] < 1:
        raise ValueError(f"EngineConfig.{name}={getattr(self, name)}; expected positive sizes")
      object.__setattr__(self, name, value)
    if self.capacity < 1:
      raise ValueError(f"EngineConfig.capacity={self.capacity}; expected >= 1")

  @property
  def max_batch(self) -> int:
    return self.batch_buckets[-1]

  @property
  def max_input_length(self) -> int:
    return self.length_buckets[-1]

  @property
  def max_target_length(self) -> int:
    return self.target_buckets[-1]


def bucket(size: int, buckets: Sequence[int], what: str) -> int:
  """The smallest bucket >= size."""
  for b in buckets:
    if size <= b:
      return b
  raise ServingError(f"{what} {size} exceeds the largest compiled size {buckets[-1]}", 413,
                     "too_large")


class PromptStore:
  """Named prompts in a fixed-capacity bank: a host copy and the device array.

  Every change builds a new device array and leaves the old one alone, so a
  batch that took a snapshot keeps the prompts it started with even if a
  prompt is replaced or deleted while it runs.
  """

  def __init__(self, capacity: int, length: int, width: int):
    self.shape = (length, width)
    self._host = np.zeros((capacity, length, width), np.float32)
    self._rows: dict[str, int] = {}
    self._lock = threading.Lock()
    self._device = jax.device_put(self._host)

  @property
  def capacity(self) -> int:
    return self._host.shape[0]

  def check(self, value: Any) -> np.ndarray:
    """The prompt as float32 [P, H], or a ServingError naming the expected shape."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.shape != self.shape:
      raise ServingError(f"prompt has shape {array.shape} and dtype {array.dtype}; expected a "
                         f"numeric [P, H] = {list(self.shape)} array", 422, "wrong_prompt_shape")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
      raise ServingError("prompt has non-finite values", 422, "wrong_prompt_shape")
    return array

  def put(self, name: str, value: Any) -> bool:
    """Adds or replaces a prompt; returns True when it was new."""
    array = self.check(value)
    with self._lock:
      created = name not in self._rows
      if created:
        free = sorted(set(range(self.capacity)) - set(self._rows.values()))
        if not free:
          raise ServingError(f"the prompt bank is full ({self.capacity} prompts); delete one "
                             "first or start the server with a larger --max_prompts", 409,
                             "bank_full")
        self._rows[name] = free[0]
      self._host[self._rows[name]] = array
      self._device = jax.device_put(self._host.copy())
    return created

  def delete(self, name: str) -> None:
    with self._lock:
      if name not in self._rows:
        raise UnknownPrompt(f"no prompt named {name!r}")
      row = self._rows.pop(name)
      self._host[row] = 0.0
      self._device = jax.device_put(self._host.copy())

  def names(self) -> list[str]:
    with self._lock:
      return sorted(self._rows)

  def __contains__(self, name: str) -> bool:
    with self._lock:
      return name in self._rows

  def snapshot(self) -> tuple[jax.Array, dict[str, int]]:
    """(device bank [N, P, H], name -> row), consistent with each other."""
    with self._lock:
      return self._device, dict(self._rows)


def _bank_path(model: T5) -> str:
  from prompt_tuning.models import params as params_lib
  shapes, _ = params_lib.abstract_params(model)
  paths = [p for p in tree_lib.flatten(shapes) if p.endswith("/prompts")]
  if len(paths) != 1:
    raise ValueError(f"Expected one prompt bank parameter, found {paths}")
  return paths[0]


def _decode_text(vocabulary: Any, row: np.ndarray) -> str:
  """Text of one output row, cut at EOS (as `evaluation.predict` does)."""
  ids = [int(t) for t in row]
  return vocabulary.decode(ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids)


class Engine:
  """One frozen backbone, a prompt bank, and compiled generate/score programs."""

  def __init__(self, model_config: T5Config, backbone_params: Any, prompt_length: int,
               vocabulary: Any, config: EngineConfig = EngineConfig()):
    if vocabulary.vocab_size > model_config.vocab_size:
      raise ValueError(f"The vocabulary has {vocabulary.vocab_size} ids but the model's "
                       f"embedding table only {model_config.vocab_size} rows; pass the "
                       "backbone's own vocabulary")
    self.config = config
    self.vocabulary = vocabulary
    self.model_config = model_config
    self.model = T5(model_config, encoder_prompt=multi_task.PromptBank(
        num_prompts=config.capacity, length=prompt_length))
    self.plain_model = T5(model_config)  # The backbone alone (requests naming no prompt).
    self._bank_path = _bank_path(self.model)
    flat = {k: v for k, v in tree_lib.flatten(backbone_params).items() if k != self._bank_path}
    self._frozen = jax.device_put(flat)
    self.prompts = PromptStore(config.capacity, prompt_length, model_config.emb_dim)
    self._compiled: dict[Hashable, Callable] = {}
    self._compile_lock = threading.Lock()
    self._batches = 0

  @property
  def compile_count(self) -> int:
    return len(self._compiled)

  # Text.

  def tokenize(self, text: str) -> list[int]:
    """Input ids with EOS appended (as the seqio tasks feed infer)."""
    ids = self.vocabulary.encode(text)
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)] + [EOS_ID]

  # Programs.

  def _params(self, frozen: dict[str, Any], bank: jax.Array) -> Any:
    return tree_lib.unflatten({**frozen, self._bank_path: bank})

  def program(self, key: Hashable, build: Callable[[], Callable], *example_args,
              donate: Sequence[int] = ()) -> Callable:
    """The program compiled for `key` (built, lowered on `example_args` and compiled once)."""
    with self._compile_lock:
      if key not in self._compiled:
        self._compiled[key] = jax.jit(build(), donate_argnums=tuple(donate)).lower(
            *example_args).compile()
      return self._compiled[key]

  def _generate_program(self, b: int, l: int, dec: decoding.DecodingConfig,
                        prompted: bool = True) -> Callable:
    def build():
      def fn(frozen, bank, tokens_BL, index_B, rng):
        if not prompted:  # The backbone alone (the bank is an unused argument).
          return decoding.generate(self.plain_model, tree_lib.unflatten(frozen), tokens_BL, dec,
                                   rng=rng)
        return decoding.generate(self.model, self._params(frozen, bank), tokens_BL, dec,
                                 rng=rng, prompt_features={"task_index": index_B})
      return fn
    bank, _ = self.prompts.snapshot()
    key = ("generate", b, l, dec) if prompted else ("generate", b, l, dec, "no prompt")
    return self.program(key, build, self._frozen, bank, jax.ShapeDtypeStruct((b, l), jnp.int32),
                        jax.ShapeDtypeStruct((b,), jnp.int32), jax.random.PRNGKey(0))

  def _score_program(self, b: int, l: int, t: int) -> Callable:
    def build():
      def fn(frozen, bank, tokens_BL, targets_BT, index_B):
        return decoding.score(self.model, self._params(frozen, bank), tokens_BL, targets_BT,
                              prompt_features={"task_index": index_B})
      return fn
    bank, _ = self.prompts.snapshot()
    return self.program(("score", b, l, t), build, self._frozen, bank,
                        jax.ShapeDtypeStruct((b, l), jnp.int32),
                        jax.ShapeDtypeStruct((b, t), jnp.int32),
                        jax.ShapeDtypeStruct((b,), jnp.int32))

  def warmup_tasks(self, decoding_configs: Sequence[decoding.DecodingConfig] = (),
                   score: bool = True) -> list[Callable[[], Any]]:
    """One call per program `warmup` compiles, smallest shapes first."""
    c = self.config
    tasks = []
    for b in c.batch_buckets:
      for l in c.length_buckets:
        for dec in decoding_configs:
          tasks.append(functools.partial(self._generate_program, b, l, dec))
        if score:
          for t in c.target_buckets:
            tasks.append(functools.partial(self._score_program, b, l, t))
    return tasks

  def warmup(self, decoding_configs: Sequence[decoding.DecodingConfig] = (),
             score: bool = True) -> int:
    """Compiles every bucket for the given decoding options (and scoring); returns the count."""
    for task in self.warmup_tasks(decoding_configs, score):
      task()
    return self.compile_count

  # Batches.

  @staticmethod
  def _pad(rows: Sequence[Sequence[int]], b: int, length: int) -> np.ndarray:
    out = np.zeros((b, length), np.int32)
    for i, ids in enumerate(rows):
      out[i, :len(ids)] = ids
    return out

  def generate(self, bank: jax.Array, index: Sequence[int], inputs: Sequence[Sequence[int]],
               dec: decoding.DecodingConfig, prompted: bool = True
               ) -> list[tuple[str, float, int, bool]]:
    """(text, score, tokens decoded, whether it ended with EOS) per row: rows are token
    lists with EOS, each with its bank row (unless not `prompted`: then the backbone
    decodes without a prompt)."""
    c = self.config
    b = bucket(len(inputs), c.batch_buckets, "batch of")
    l = bucket(max(len(r) for r in inputs), c.length_buckets, "input length")
    program = self._generate_program(b, l, dec, prompted)
    self._batches += 1
    rng = jax.random.fold_in(jax.random.PRNGKey(c.seed), self._batches)
    index_B = np.zeros((b,), np.int32)
    index_B[:len(index)] = index
    tokens, scores = program(self._frozen, bank, self._pad(inputs, b, l), index_B, rng)
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    out = []
    for i in range(len(inputs)):
      row = tokens[i].tolist()
      ended = EOS_ID in row
      out.append((_decode_text(self.vocabulary, tokens[i]), float(scores[i]),
                  row.index(EOS_ID) + 1 if ended else len(row), ended))
    return out

  def score(self, bank: jax.Array, index: Sequence[int], inputs: Sequence[Sequence[int]],
            targets: Sequence[Sequence[int]]) -> np.ndarray:
    """Log-probability of each row's target given its input [rows]."""
    c = self.config
    b = bucket(len(inputs), c.batch_buckets, "batch of")
    l = bucket(max(len(r) for r in inputs), c.length_buckets, "input length")
    t = bucket(max(len(r) for r in targets), c.target_buckets, "candidate length")
    program = self._score_program(b, l, t)
    index_B = np.zeros((b,), np.int32)
    index_B[:len(index)] = index
    out = program(self._frozen, bank, self._pad(inputs, b, l), self._pad(targets, b, t),
                  index_B)
    return np.asarray(out)[:len(inputs)]


def load_vocabulary(spec: str) -> Any:
  """'byte' (the quickstart backbones), or a SentencePiece .model path."""
  import seqio
  if spec == "byte":
    return seqio.ByteVocabulary()
  import os
  if not os.path.isfile(spec):
    raise FileNotFoundError(f"Vocabulary {spec!r}: expected 'byte' or a SentencePiece .model "
                            "file")
  return seqio.SentencePieceVocabulary(spec)


def load_backbone(path: str, relative_attention_max_distance: Optional[int] = None
                  ) -> tuple[T5Config, Any]:
  """(config, parameters) of a T5X checkpoint or Hugging Face folder; each array read once."""
  from prompt_tuning import readers
  config = readers.config_for(path, relative_attention_max_distance)
  return config, readers.load_params(path, T5(config))
