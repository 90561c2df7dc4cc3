"""Will the run fit? An estimate from shapes alone, checked before any work.

`--gin.PROMPT_LENGTH=100000` on a small backbone used to start training,
create MODEL_DIR/checkpoints and train/, then die in XLA with
"RESOURCE_EXHAUSTED: Out of memory allocating 3211650741144 bytes" and a
traceback. The memory a step needs follows from the shapes the binaries
already know before they read anything, so it is estimated from them and
compared with what this machine has; a run that cannot fit is refused with
one line giving both figures and the settings that drive them, before
MODEL_DIR is created. `ALLOW_OVERSUBSCRIBE` (gin; `--allow_oversubscribe`
for serve) turns the refusal into a warning.

The estimate is an analytic bound, not XLA's buffer assignment (which needs
a compile of the exact step: seconds to minutes on a large model, and the
step is built later). It counts, per device:

  * parameters, frozen and trainable, as their shardings place them;
  * training: one gradient and one updated copy of the trainable
    parameters, and the optimizer state (`jax.eval_shape` of its init);
  * activations kept for the backward pass, per layer: the projections,
    norms, residuals and MLP intermediates of each position
    (4 x width + 4 x heads x head_dim + (gates + 1) x mlp_dim values), the
    attention scores and probabilities (2 x heads x query length x key
    length, float32) and, when dropout is on, their masks; a recomputed
    layer (`remat_policy='full'`) keeps only its input, a per-example
    attention loop recomputes the scores (one example's at a time); the
    attention masks and position biases, shared by the layers; the logits
    with their log-softmax and gradient (3 x batch x target length x
    vocabulary, float32);
  * inference: one layer's forward working set, the decoder's self- and
    cross-attention caches, and the logits of every row (beams, candidates).

Activations are split over the devices of the mesh. On a CPU the devices
share host RAM, so the host needs the sum over this process's devices;
available is MemAvailable (/proc/meminfo), lowered to the cgroup's limit
where one is set. On a GPU or TPU, each device's need is compared with its
own free memory (`memory_stats()`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Optional

import jax
import numpy as np

from prompt_tuning import registry

log = logging.getLogger(__name__)


class InsufficientMemoryError(ValueError):
  """The run's estimated memory exceeds what this machine has."""


@registry.configurable
@dataclasses.dataclass(frozen=True)
class MemoryCheck:
  """How the binaries treat a run whose estimate exceeds the memory available.

  Attributes:
    allow_oversubscribe: ALLOW_OVERSUBSCRIBE in the run files. False (default)
      refuses the run before any work; True logs the same figures as a
      warning and goes ahead (XLA may still run out of memory).
    available_bytes: the memory the run may use, instead of the measured
      figure (per device on a GPU or TPU, host RAM on a CPU): a job's share
      of a host that has no cgroup limit, for instance.
  """
  allow_oversubscribe: bool = False
  available_bytes: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes by part, per device (or for this host's devices together, on a CPU)."""
  parts: dict[str, int]
  settings: str  # the values that drive it, as the user set them

  @property
  def total(self) -> int:
    return int(sum(self.parts.values()))


@dataclasses.dataclass(frozen=True)
class Available:
  bytes: int
  where: str


def human(n: float) -> str:
  """1536 -> '1.5 KiB'."""
  for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
    if abs(n) < 1024 or unit == "PiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
    n /= 1024
  return f"{n:.3g} PiB"


# --- the estimate ------------------------------------------------------------------

def _bytes_per_device(tree: Any) -> int:
  """Bytes of a tree of ShapeDtypeStructs (or arrays) on the device holding most of it."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None and hasattr(sharding, "shard_shape"):
      shape = tuple(sharding.shard_shape(shape))
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def _layer_sizes(config: Any) -> tuple[int, int, int]:
  """(values saved per position in a layer, heads, activation bytes)."""
  width, inner = config.emb_dim, config.num_heads * config.head_dim
  gates = len(config.mlp_activations)
  per_position = 4 * width + 4 * inner + (gates + 1) * config.mlp_dim
  return per_position, config.num_heads, np.dtype(config.dtype).itemsize


def _example_loop(config: Any) -> bool:
  from prompt_tuning.models import t5
  return t5.attention_example_loop(config)


def training_activations(config: Any, batch: int, encoder_length: int, decoder_length: int,
                         dropout: bool) -> int:
  """Bytes the forward pass keeps for the backward pass, all devices together."""
  per_position, heads, act = _layer_sizes(config)
  scores = 4 if config.float32_attention_logits else act
  mask = 1 if dropout else 0  # 8-bit (or boolean) masks
  inner = config.num_heads * config.head_dim
  le, ld = encoder_length, decoder_length
  loop = _example_loop(config)
  # Per example and layer: the positions' values, attention scores and
  # probabilities, and the dropout masks of the probabilities.
  enc_positions = le * (per_position * act + mask * (3 * config.emb_dim + config.mlp_dim))
  dec_positions = (ld * (per_position * act + (2 * config.emb_dim + 2 * inner) * act)
                   + le * 2 * inner * act  # cross-attention keys and values
                   + mask * ld * (4 * config.emb_dim + config.mlp_dim))
  enc_scores, enc_drop = heads * le * le * 2 * scores, heads * le * le * mask
  dec_scores, dec_drop = heads * ld * (ld + le) * 2 * scores, heads * ld * (ld + le) * mask
  n_enc, n_dec = config.num_encoder_layers, config.num_decoder_layers
  # The attention masks (per example) and position biases (per head), shared by layers.
  shared = (2 * batch * (le * le + ld * ld + ld * le) * 4
            + heads * (le * le + ld * ld) * scores)
  # Scores in use by the layer being differentiated (one example's, with the loop).
  working = (1 if loop else batch) * max(enc_scores, dec_scores)
  if config.remat_policy == "full":  # Each layer keeps its input; one is recomputed at a time.
    kept = ((n_enc * le + n_dec * ld) * config.emb_dim * act * batch
            + batch * max(enc_positions + enc_scores + enc_drop,
                          dec_positions + dec_scores + dec_drop))
  else:
    kept = batch * (n_enc * (enc_positions + enc_drop) + n_dec * (dec_positions + dec_drop))
    if config.remat_policy != "minimal" and not loop:  # Scores are kept, not recomputed.
      kept += batch * (n_enc * enc_scores + n_dec * dec_scores)
  embeddings = 2 * batch * (le + ld) * config.emb_dim * act
  logits = 3 * batch * ld * config.vocab_size * 4
  return int(kept + shared + working + embeddings + logits)


def inference_activations(config: Any, batch: int, encoder_length: int, decode_length: int,
                          beams: int = 1, candidates: int = 1, target_length: int = 0) -> int:
  """Peak bytes of encoding, then decoding `beams` rows or scoring `candidates` targets of
  `target_length` per example, all devices together (nothing is kept for a backward pass)."""
  per_position, heads, act = _layer_sizes(config)
  scores = 4 if config.float32_attention_logits else act
  inner = config.num_heads * config.head_dim
  le = encoder_length
  score_rows = 1 if _example_loop(config) else batch
  encode = (batch * le * (per_position + 2 * config.emb_dim) * act
            + score_rows * heads * le * le * 2 * scores
            + batch * le * le * 4 + heads * le * le * scores)  # the mask and position bias
  cross_cache = batch * le * 2 * inner * config.num_decoder_layers * act
  rows = batch * max(beams, 1)
  generate = (rows * decode_length * 2 * inner * config.num_decoder_layers * act
              + rows * (per_position * act + heads * (decode_length + le) * scores * 2)
              + 3 * rows * config.vocab_size * 4)
  score = 0
  if target_length:
    rows = batch * max(candidates, 1)
    score = (rows * target_length * (per_position * act + heads * (target_length + le)
                                     * scores * 2)
             + 2 * rows * target_length * config.vocab_size * 4)
  return int(max(encode, cross_cache + max(generate, score)))


def _per_device(total: int, mesh: Any) -> int:
  return -(-int(total) // max(int(mesh.size), 1))


def _host_devices(mesh: Any) -> int:
  """How many of the mesh's devices this process drives."""
  return sum(d.process_index == jax.process_index() for d in np.asarray(mesh.devices).flat)


def _finish(parts: dict[str, int], settings: str, mesh: Any) -> Estimate:
  """Per device; on a CPU, for this process's devices together (they share host RAM)."""
  if _platform(mesh) == "cpu":
    parts = {k: v * _host_devices(mesh) for k, v in parts.items()}
  return Estimate({k: int(v) for k, v in parts.items() if v}, settings)


def _platform(mesh: Any) -> str:
  return np.asarray(mesh.devices).flat[0].platform


def _settings(batch: int, inputs: int, prompt: int, rest: str) -> str:
  encoder = f"encoder length {inputs + prompt} (inputs {inputs} + PROMPT_LENGTH {prompt})" \
      if prompt else f"encoder length {inputs}"
  return f"BATCH_SIZE {batch} x {encoder}{rest}"


def train_estimate(setup: Any, opt_state: Any, batch_size: int,
                   feature_lengths: dict[str, int], dropout: bool) -> Estimate:
  """The train step's memory.

  Args:
    setup: runtime.setup.AbstractSetup (shapes and shardings; nothing read).
    opt_state: the optimizer state's abstract tree (`jax.eval_shape(opt.init, trainable)`).
    batch_size, feature_lengths: the DataSpec's.
    dropout: whether the step draws dropout masks.
  """
  config, mesh = setup.model.config, setup.mesh
  prompt = _prompt_positions(setup.spec)
  le = int(feature_lengths["inputs"]) + prompt
  ld = int(feature_lengths.get("targets", 1))
  trainable = _bytes_per_device(setup.trainable)
  global_trainable = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                         for x in jax.tree.leaves(setup.trainable))
  opt_total = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                  for x in jax.tree.leaves(opt_state))
  # Optimizer state is sharded like the parameters it mirrors.
  opt = opt_total * trainable // max(global_trainable, 1) if global_trainable else opt_total
  parts = dict(parameters=_bytes_per_device(setup.frozen) + trainable,
               gradients_and_update=2 * trainable, optimizer_state=opt,
               activations=_per_device(training_activations(config, batch_size, le, ld, dropout),
                                       mesh))
  settings = _settings(batch_size, int(feature_lengths["inputs"]), prompt,
                       f" x targets {ld}; {_model_words(config)}")
  return _finish(parts, settings, mesh)


def inference_estimate(setup: Any, batch_size: int, input_length: int, decode_length: int,
                       beams: int = 1, candidates: int = 1, target_length: int = 0,
                       extra_parameters: int = 0) -> Estimate:
  """Eval's, infer's or serve's memory: parameters plus the largest batch's working set."""
  config, mesh = setup.model.config, setup.mesh
  prompt = _prompt_positions(setup.spec)
  le = int(input_length) + prompt
  parts = dict(parameters=_bytes_per_device(setup.frozen) + _bytes_per_device(setup.trainable)
               + extra_parameters,
               activations=_per_device(inference_activations(
                   config, batch_size, le, decode_length, beams, candidates, target_length),
                   mesh))
  rest = f" x decode length {decode_length}"
  if beams > 1:
    rest += f" x {beams} beams"
  if target_length:
    rest += f" (or {candidates} candidates of length {target_length})"
  settings = _settings(batch_size, int(input_length), prompt, f"{rest}; {_model_words(config)}")
  return _finish(parts, settings, mesh)


def _prompt_positions(spec: Any) -> int:
  from prompt_tuning.prompts import base as prompt_base
  return prompt_base.num_positions(getattr(spec, "encoder_prompt", None))


def _model_words(config: Any) -> str:
  return (f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, width "
          f"{config.emb_dim}, {config.num_heads} heads, vocabulary {config.vocab_size}")


# --- what is available ---------------------------------------------------------------

def _read_int(path: str) -> Optional[int]:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def host_available() -> Available:
  """MemAvailable, lowered to the cgroup's limit (less its usage) where one is set."""
  where, value = "host RAM, MemAvailable", None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          value = int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  if value is None:
    try:
      value = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
      where = "host RAM, free pages"
    except (ValueError, OSError, AttributeError):
      value = None
  for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                  "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
    limit = _read_int(limit_file)
    if limit is not None and limit < 1 << 60:  # v1 writes a huge number for "no limit"
      left = max(limit - (_read_int(usage_file) or 0), 0)
      if value is None or left < value:
        value, where = left, f"cgroup memory limit {human(limit)} less its usage"
      break
  return Available(int(value) if value is not None else 0, where if value is not None else "")


def available(mesh: Any) -> Optional[Available]:
  """Free memory per device (GPU/TPU) or of the host (CPU); None where unknown."""
  devices = [d for d in np.asarray(mesh.devices).flat if d.process_index == jax.process_index()]
  if not devices:
    return None
  if devices[0].platform == "cpu":
    host = host_available()
    return host if host.where else None
  free = []
  for device in devices:
    try:
      stats = device.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except  (backends without statistics)
      stats = {}
    if "bytes_limit" in stats:
      free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
  if not free:
    return None
  return Available(min(free), f"free {devices[0].platform.upper()} memory per device")


# --- the decision -----------------------------------------------------------------------

def check(estimate: Estimate, memory_check: MemoryCheck, mesh: Any, what: str,
          override: str = "--gin.ALLOW_OVERSUBSCRIBE=True") -> None:
  """Refuses (InsufficientMemoryError) or warns when the estimate exceeds what is available."""
  if memory_check.available_bytes is not None:
    free: Optional[Available] = Available(int(memory_check.available_bytes),
                                          "MemoryCheck.available_bytes")
  else:
    free = available(mesh)
  if free is None:
    log.info("Memory not checked: this backend reports no free memory (the %s needs about "
             "%s)", what, human(estimate.total))
    return
  decide(estimate, free, memory_check.allow_oversubscribe, what, override)


def decide(estimate: Estimate, free: Available, allow_oversubscribe: bool, what: str,
           override: str = "--gin.ALLOW_OVERSUBSCRIBE=True") -> None:
  """The decision alone: refuse, warn, or pass."""
  if estimate.total <= free.bytes:
    return
  parts = ", ".join(f"{name.replace('_', ' ')} {human(n)}"
                    for name, n in sorted(estimate.parts.items(), key=lambda kv: -kv[1]))
  message = (f"The {what} needs about {human(estimate.total)} of memory ({parts}) but "
             f"{human(free.bytes)} is available ({free.where}); the estimate comes from "
             f"{estimate.settings}")
  if allow_oversubscribe:
    log.warning("%s. Going ahead (allowed by %s); it may run out of memory.", message,
                override)
    return
  raise InsufficientMemoryError(
      f"{message}. Lower BATCH_SIZE, TASK_FEATURE_LENGTHS or PROMPT_LENGTH (or recompute "
      f"layers: T5Config.remat_policy='full'), or pass {override} to run anyway")
