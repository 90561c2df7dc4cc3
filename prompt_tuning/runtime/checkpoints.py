"""Checkpoints of what changes: trainable parameters, their optimizer state, the
step and the data position, saved with Orbax (atomic: a step folder appears
only once complete). The frozen backbone is never saved; it is re-read from
INITIAL_CHECKPOINT_PATH. Every save also exports each prompt as
`MODEL_DIR/prompts/step_N/<param path with '.' for '/'>.npy`.

Each committed step also gets a manifest (every file's size) under
MODEL_DIR/checkpoint_manifests/, so that a truncated or deleted file is
found, and named, before Orbax reads the step. A save that fails for lack of
space raises DiskFullError after removing its partial folder; the previous
step stays the latest. A MODEL_DIR whose checkpoints another run wrote, with
other shapes (another PROMPT_LENGTH, prompt method or model), is refused
before anything is read or written (OtherRunError, `check_same_shapes`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Iterator, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning import trees as tree_lib
from prompt_tuning.prompts import base as prompt_base
from prompt_tuning.prompts import deep as deep_prompts
from prompt_tuning.prompts import provenance
from prompt_tuning.runtime import background
from prompt_tuning.runtime import faults
from prompt_tuning import layout
MANIFESTS = "checkpoint_manifests"
DAMAGED = "damaged_checkpoints"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How TensorStore (Orbax's writer) reports an OS error: in the message text.
_NO_SPACE_TEXT = re.compile(r"os_error_code='(%s)'|No space left on device|Disk quota exceeded|"
                            r"File too large" % "|".join(str(e) for e in _NO_SPACE))

log = logging.getLogger(__name__)


class DiskFullError(OSError):
  """A save failed for lack of space; the previous checkpoint is intact."""


class DamagedCheckpointError(ValueError):
  """A committed checkpoint whose files no longer match its manifest."""


class OtherRunError(ValueError):
  """MODEL_DIR's checkpoints hold parameters of other shapes than this run's."""


class CheckpointStore:
  """MODEL_DIR/checkpoints/<step>/{trainable, opt_state, meta}, managed by Orbax."""

  def __init__(self, model_dir: str, max_to_keep: Optional[int] = None):
    self.model_dir = model_dir
    self.directory = layout.checkpoints_dir(model_dir)
    self.max_to_keep = max_to_keep
    # A failed restore or save leaves TensorStore callbacks to a closed loop.
    background.drop_closed_loop_callbacks()
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    # The folder is made by the first save, not here: a run that stops before
    # its first step (or an eval that only reads) leaves no empty checkpoints/.
    return ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep,
                                                             create=False))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, trainable: Any, opt_state: Any, data_position: int,
           extra: Optional[dict] = None) -> None:
    """Saves (blocking until committed) unless this step is already saved."""
    if step in self._manager.all_steps():
      return
    meta = dict(step=int(step), data_position=int(data_position), **(extra or {}))
    os.makedirs(self.directory, exist_ok=True)
    faults.maybe_fill_disk(step)
    try:
      with _held_back_orbax_errors() as held:
        self._manager.save(step, args=ocp.args.Composite(
            trainable=ocp.args.StandardSave(trainable),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)))
        faults.maybe_kill("during_save", step)  # The write is under way, not committed.
        self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not _is_no_space(e):
        held.release()
        raise
      self._remove_partial(step)
      latest = self.latest_step()
      raise DiskFullError(
          f"Saving checkpoint step {step} failed for lack of space "
          f"({_first_line(e)}); the partial step was removed and the latest checkpoint is "
          f"{'still step ' + str(latest) if latest is not None else 'none'}. Free space in "
          f"{self.directory}, then run the same command to resume") from e
    if jax.process_index() == 0:
      try:
        self._write_manifest(step)
      except OSError as e:  # The step is committed; only its damage check is lost.
        log.warning("Could not record the files of checkpoint step %d (%s); a damaged file "
                    "in it will be reported by Orbax instead", step, e)

  def restore(self, abstract_trainable: Any, abstract_opt_state: Any,
              step: Optional[int] = None, fallback: bool = False
              ) -> Optional[tuple[Any, Any, dict]]:
    """(trainable, opt_state, meta) of `step` (default: latest), or None if none saved.

    Args:
      fallback: when the latest step is damaged (a file missing or of the
        wrong size), move it to MODEL_DIR/damaged_checkpoints/ and restore the
        latest good one; without it, raise DamagedCheckpointError naming the
        file.
    """
    if step is None:
      step = self._latest_good_step(fallback)
    else:
      self._raise_if_damaged(step)
    if step is None:
      return None
    if step not in self._manager.all_steps():
      raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory}; "
                              f"saved steps: {self.all_steps()}")
    check_same_shapes(self.model_dir, abstract_trainable, step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardRestore(abstract_trainable),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore()))
    return restored.trainable, restored.opt_state, dict(restored.meta)

  def restore_trainable(self, abstract_trainable: Any, step: Optional[int] = None) -> Any:
    """Only the trainable parameters (for eval and infer)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory} to evaluate")
    self._raise_if_damaged(step)
    check_same_shapes(self.model_dir, abstract_trainable, step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardRestore(abstract_trainable)))
    return restored.trainable

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # --- integrity ------------------------------------------------------------

  def _manifest_path(self, step: int) -> str:
    return os.path.join(os.path.dirname(self.directory), MANIFESTS, f"{step}.json")

  def _write_manifest(self, step: int) -> None:
    """Records the size of every file of a committed step (written atomically)."""
    root = self.step_dir(step)
    sizes = {os.path.relpath(os.path.join(d, f), root): os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(root) for f in files}
    path = self._manifest_path(step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
      with os.fdopen(fd, "w") as f:
        json.dump(dict(step=step, files=sizes), f, indent=0, sort_keys=True)
      os.replace(tmp, path)
    except BaseException:
      _remove_quietly(tmp)
      raise
    kept = set(self.all_steps())  # Steps Orbax has rotated out need no manifest.
    for name in os.listdir(os.path.dirname(path)):
      stem = name[:-len(".json")] if name.endswith(".json") else None
      if stem and stem.isdigit() and int(stem) not in kept:
        _remove_quietly(os.path.join(os.path.dirname(path), name))

  def damage(self, step: int) -> Optional[str]:
    """What is wrong with a committed step's files, or None (also when unrecorded)."""
    try:
      with open(self._manifest_path(step)) as f:
        sizes = json.load(f)["files"]
    except (FileNotFoundError, ValueError, KeyError):
      return None  # Saved before manifests existed, or killed before writing it.
    root = self.step_dir(step)
    for name, size in sorted(sizes.items()):
      path = os.path.join(root, name)
      if not os.path.exists(path):
        return f"{path} is missing"
      actual = os.path.getsize(path)
      if actual != size:
        return (f"{path} is truncated ({actual} of {size} bytes)" if actual < size else
                f"{path} has {actual} bytes; {size} were written")
    return None

  def _raise_if_damaged(self, step: int, fallback_hint: str = "") -> None:
    problem = self.damage(step)
    if problem:
      raise DamagedCheckpointError(f"Checkpoint step {step} is damaged: {problem}{fallback_hint}")

  def _latest_good_step(self, fallback: bool) -> Optional[int]:
    while True:
      steps = self.all_steps()
      if not steps:
        return None
      latest = steps[-1]
      problem = self.damage(latest)
      if problem is None:
        return latest
      previous = steps[-2] if len(steps) > 1 else None
      if not fallback:
        hint = (f". Pass --gin.CheckpointSpec.restore_fallback=True to resume from step "
                f"{previous}, the previous checkpoint (the damaged one is kept aside)"
                if previous is not None else "; there is no earlier checkpoint to fall back to")
        self._raise_if_damaged(latest, hint)
      if previous is None:
        self._raise_if_damaged(latest, "; there is no earlier checkpoint to fall back to")
      aside = self._set_aside(latest)
      log.warning("Checkpoint step %d is damaged (%s); moved it to %s and resuming from step "
                  "%d (restore_fallback=True)", latest, problem, aside, previous)

  def _set_aside(self, step: int) -> str:
    """Moves a damaged step (and its exported prompts) out of Orbax's sight, keeping it.

    On a multi-host run process 0 moves it; the others wait for it.
    """
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      target = self._move_aside(step) if jax.process_index() == 0 else ""
      multihost_utils.sync_global_devices(f"set_aside_checkpoint_{step}")
      self._manager.reload()
      return target or f"{DAMAGED}/{step}"
    target = self._move_aside(step)
    self._manager.reload()
    return target

  def _move_aside(self, step: int) -> str:
    model_dir = os.path.dirname(self.directory)
    target = os.path.join(model_dir, DAMAGED, str(step))
    n = 1
    while os.path.exists(target):
      n += 1
      target = os.path.join(model_dir, DAMAGED, f"{step}-{n}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(self.step_dir(step), target)
    prompts = layout.prompts_dir(model_dir, step)
    if os.path.isdir(prompts):
      os.rename(prompts, target + ".prompts")
    manifest = self._manifest_path(step)
    if os.path.exists(manifest):
      os.rename(manifest, target + ".manifest.json")
    return target

  def _remove_partial(self, step: int) -> None:
    """Removes what a failed save of `step` left; a fresh manager replaces the failed one.

    The failed manager would raise its writer threads' error again on every
    later call (close() included), hiding the one-line explanation.
    """
    # Orbax's writer threads may still report this failure after close();
    # the one-line error explains it, so their records about it are dropped.
    for handler in _orbax_handlers():
      handler.addFilter(_DropFailedStep(os.path.join(self.directory, str(step))))
    try:
      with _held_back_orbax_errors(drop=True):
        self._manager.close()
    except Exception:  # pylint: disable=broad-except
      pass  # The same failure, already explained.
    self._sweep_partial(step)
    self._manager = self._new_manager()

  def _sweep_partial(self, step: Optional[int] = None, tries: int = 20) -> None:
    """Removes uncommitted step folders (Orbax's `<step>.orbax-checkpoint-tmp...`).

    A writer thread of a failed save may still be closing files when this
    runs, so removal is retried for a few seconds until nothing is left.
    """
    import time
    for _ in range(tries):
      left = [n for n in os.listdir(self.directory) if "tmp" in n and (
          step is None or n.startswith(f"{step}."))]
      if not left:
        return
      for name in left:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      time.sleep(0.2)

  def close(self) -> None:
    # No sweep here: eval may close a store while a trainer's save is in flight.
    self._manager.close()


def committed_steps(model_dir: str) -> list[int]:
  """MODEL_DIR's committed checkpoint steps, read from the folder alone (nothing is created).

  Orbax names a step being written `<step>.orbax-checkpoint-tmp-...`; only
  plain numbers are committed.
  """
  directory = layout.checkpoints_dir(model_dir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def stored_shapes(model_dir: str, step: int) -> Optional[dict[str, tuple[int, ...]]]:
  """{parameter: shape} of a step's trainable parameters, from Orbax's metadata alone;
  None where the metadata cannot be read (a damaged step is reported by the restore)."""
  path = os.path.join(layout.checkpoints_dir(model_dir), str(step), "trainable")
  if not os.path.isfile(os.path.join(path, "_METADATA")):
    return None
  from etils import epath
  # The item's own handler: a Checkpointer would look for step metadata here too.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = getattr(handler.metadata(epath.Path(path)), "tree", None)
  except Exception:  # pylint: disable=broad-except
    return None
  finally:
    handler.close()
  if not isinstance(tree, dict):
    return None
  return {k: tuple(getattr(v, "shape", ()) or ()) for k, v in tree_lib.flatten(tree).items()}


def check_same_shapes(model_dir: str, abstract_trainable: Any,
                      step: Optional[int] = None) -> None:
  """Raises OtherRunError when MODEL_DIR's checkpoint (`step`, default the latest)
  holds trainable parameters of other names or shapes than `abstract_trainable`.

  Orbax's own refusal ("Requested shape ... is not compatible with the stored
  shape ... set `strict=False` in `ArrayRestoreArgs`") names neither the
  folder nor the setting, and advises something no user should do.
  """
  steps = committed_steps(model_dir)
  step = steps[-1] if step is None and steps else step
  if step is None:
    return
  stored = stored_shapes(model_dir, step)
  if stored is None:
    return
  wanted = {k: tuple(getattr(v, "shape", None) or np.shape(v))
            for k, v in tree_lib.flatten(abstract_trainable).items()}
  differ = [f"{k} of shape {stored[k]} (this run's: {wanted[k]})" for k in sorted(wanted)
            if k in stored and stored[k] != wanted[k]]
  missing = sorted(set(wanted) - set(stored))
  extra = sorted(set(stored) - set(wanted))
  if not (differ or missing or extra):
    return

  def some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
  parts = [some(differ)] if differ else []
  if extra:
    parts.append(f"{some(extra)}, which this run lacks")
  if missing:
    parts.append(f"no {some(missing)} (this run has)")
  prompts = [k for k in sorted(wanted) if k in stored and stored[k] != wanted[k]
             and prompt_base.PROMPT_PARAM.fullmatch(k) and len(stored[k]) == 2
             and stored[k][1:] == wanted[k][1:]]
  same = (f" (PROMPT_LENGTH={stored[prompts[0]][0]})" if prompts else "")
  raise OtherRunError(
      f"MODEL_DIR {model_dir} holds another run's checkpoints: its step {step} holds "
      f"{'; '.join(parts)}. Nothing was changed. Use another MODEL_DIR for these settings, "
      f"or the settings that wrote it{same} to resume or evaluate it")


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def _is_no_space(e: Optional[BaseException]) -> bool:
  """Whether an exception (or one it came from) is a full disk or a file-size limit."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
      return True
    if _NO_SPACE_TEXT.search(str(e)):
      return True
    e = e.__cause__ or e.__context__
  return False


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


class _HeldBack(logging.Filter):
  """Holds back Orbax's ERROR records (tracebacks from its writer threads)."""

  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []
    self.holding = True

  def filter(self, record: logging.LogRecord) -> bool:
    # Orbax logs through absl (whose records name absl's own file as their origin).
    if (self.holding and record.levelno >= logging.ERROR
        and (record.name == "absl" or record.name.startswith("orbax"))):
      self.records.append(record)
      return False
    return True

  def release(self) -> None:
    """Lets the held records through (the failure was not the one we explain)."""
    self.holding = False
    for record in self.records:
      logging.getLogger(record.name).handle(record)  # Filters removed by now.
    self.records = []


def _orbax_handlers() -> list[logging.Handler]:
  # On the handlers: a logger's own filters miss records from its children.
  return list(logging.getLogger().handlers) + list(logging.getLogger("absl").handlers)


class _DropFailedStep(logging.Filter):
  """Drops ERROR records about one failed step folder, or carrying its no-space error
  (Orbax's threads, asyncio's "Future exception was never retrieved" at exit)."""

  def __init__(self, step_path: str):
    super().__init__()
    self.step_path = step_path

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    if self.step_path in record.getMessage():
      return False
    return not (record.exc_info and _is_no_space(record.exc_info[1]))


@contextlib.contextmanager
def _held_back_orbax_errors(drop: bool = False) -> Iterator[_HeldBack]:
  """A failed save is reported in one line: Orbax's threads' tracebacks are held back.

  They are let through when the block succeeds (unless `drop`), and on failure
  when the caller calls `release()`.
  """
  held = _HeldBack()
  loggers = _orbax_handlers()
  for logger in loggers:
    logger.addFilter(held)
  try:
    yield held
  except BaseException:
    raise  # The caller decides whether the one-line error explains them.
  else:
    if not drop:
      held.release()
  finally:
    for logger in loggers:
      logger.removeFilter(held)


def directory_bytes(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def export_prompts(model_dir: str, step: int, trainable: Any, backbone: Optional[str] = None,
                   checkpoint: Optional[str] = None, task: Optional[str] = None) -> list[str]:
  """Writes every prompt leaf as .npy; refuses to replace a different existing file.

  With `backbone` (the backbone's fingerprint, `provenance.params_fingerprint`)
  each prompt also gets its provenance sidecar: the backbone, `checkpoint`,
  `task` and the step. An existing sidecar is kept (eval may have added
  metrics to it).
  """
  flat = {k: np.asarray(jax.device_get(v)) for k, v in tree_lib.flatten(trainable).items()
          if prompt_base.PROMPT_PARAM.fullmatch(k)}
  # A reparameterized deep prompt is exported as the plain prefixes it makes.
  flat = deep_prompts.fold_reparameterized(flat)
  out_dir = layout.prompts_dir(model_dir, step)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name, value in sorted(flat.items()):
    path = layout.prompt_file(model_dir, step, name)
    if os.path.exists(path):
      existing = np.load(path, allow_pickle=False)
      if existing.shape != value.shape or existing.tobytes() != value.tobytes():
        raise FileExistsError(f"Refusing to overwrite {path}: it holds a different prompt "
                              "(another run's output?); use a new MODEL_DIR")
    else:
      fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".npy.tmp")
      try:
        with os.fdopen(fd, "wb") as f:
          np.save(f, value, allow_pickle=False)
        os.replace(tmp, path)
      except BaseException:
        _remove_quietly(tmp)  # A full disk must not leave half a prompt behind.
        raise
    if backbone is not None and provenance.read(path) is None:
      provenance.write(path, provenance.record(backbone, value, checkpoint=checkpoint,
                                               task=task, step=step, parameter=name))
    written.append(path)
  return written
