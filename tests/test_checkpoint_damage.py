"""Damaged and foreign checkpoints: a damaged latest step is named and a fallback resumes
from the one before; a deleted file is named; a superseded OCDBT file is no false alarm;
another run's checkpoints are refused by their shapes.
"""

import os
import shutil

import numpy as np
import pytest

from prompt_tuning.runtime import checkpoints as checkpoints_lib
from tests import backbone_forms
from tests.conftest import (TINY_T5X_CONFIG, checkpoint_steps, error_line, exported_prompt,
                            run_cli)
from tests.test_bad_inputs import another_runs_model_dir


# --- a damaged latest checkpoint ---------------------------------------------------

def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def test_damaged_latest_checkpoint_is_named_then_fallback_resumes(workdir, straight,
                                                                   cli_in_process):
  run = str(workdir / "damaged")
  shutil.copytree(straight, run)
  assert len(checkpoint_steps(run)) >= 2  # Kept by default, so that there is one to fall back to.
  victim = _largest_file(os.path.join(run, "checkpoints", "6"))
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:
    f.truncate(size // 2)
  # The refusal in this process (one printed line); the fallback's log lines need a fresh one.
  result = cli_in_process("train", run, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_PERIOD=2")
  assert result.returncode == 2
  line = error_line(result.stderr)
  assert f"Checkpoint step 6 is damaged: {victim} is truncated ({size // 2} of {size} bytes)" \
         in line
  assert "--gin.CheckpointSpec.restore_fallback=True to resume from step 4" in line
  assert checkpoint_steps(run) == [2, 4, 6]  # Refusing changed nothing.

  result = run_cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2",
                   "--gin.CheckpointSpec.restore_fallback=True")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Checkpoint step 6 is damaged" in result.stderr
  assert "Resumed from step 4" in result.stderr
  assert os.path.isdir(os.path.join(run, checkpoints_lib.DAMAGED, "6"))  # Kept, not deleted.
  assert checkpoint_steps(run) == [2, 4, 6]
  assert exported_prompt(run, 6).tobytes() == exported_prompt(straight, 6).tobytes()


def test_a_deleted_file_is_named(workdir, straight, tmp_path):
  run = str(tmp_path / "deleted")
  shutil.copytree(straight, run)
  victim = _largest_file(os.path.join(run, "checkpoints", "6", "trainable"))
  os.remove(victim)
  store = checkpoints_lib.CheckpointStore(run)
  try:
    with pytest.raises(checkpoints_lib.DamagedCheckpointError, match=f"{victim} is missing"):
      store.restore(None, None)
    assert store.damage(4) is None
  finally:
    store.close()


# --- another run's checkpoints, a superseded OCDBT file ---------------------------

def test_restore_refuses_another_runs_shapes_and_changes_nothing(tmp_path):
  from tests.conftest import files_digest
  run = another_runs_model_dir(str(tmp_path / "run"), prompt_length=10)
  before = files_digest(run)
  store = checkpoints_lib.CheckpointStore(run)
  abstract = {"encoder_prompt": {"prompt": np.zeros((12, 4), np.float32)}}
  try:
    with pytest.raises(checkpoints_lib.OtherRunError,
                       match=r"holds another run's checkpoints: its step 2 holds encoder_prompt/"
                             r"prompt of shape \(10, 4\) \(this run's: \(12, 4\)\)"):
      store.restore(abstract, None)
    with pytest.raises(checkpoints_lib.OtherRunError, match="PROMPT_LENGTH=10"):
      store.restore_trainable(abstract)
    same = {"encoder_prompt": {"prompt": np.zeros((10, 4), np.float32)}}
    restored = store.restore_trainable(same)
    np.testing.assert_array_equal(np.asarray(restored["encoder_prompt"]["prompt"]), 1.0)
  finally:
    store.close()
  assert files_digest(run) == before


def test_a_superseded_ocdbt_file_is_no_false_alarm(tmp_path):
  """Orbax leaves per-process index files that the merged index replaces; deleting one
  loses nothing, and the backbone still loads, bit-equal."""
  from prompt_tuning import readers, trees as tree_lib
  from prompt_tuning.models.t5 import T5
  forms = backbone_forms.healthy(str(tmp_path / "forms"))
  copy = str(tmp_path / "ocdbt")
  shutil.copytree(forms["ocdbt"], copy)
  data = os.path.join(copy, backbone_forms.OCDBT_DATA)
  smallest = min((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)
  os.remove(smallest)
  loaded = tree_lib.flatten(readers.load_params(copy, T5(TINY_T5X_CONFIG)))
  expected = tree_lib.flatten(readers.load_params(forms["zarr"], T5(TINY_T5X_CONFIG)))
  assert sorted(loaded) == sorted(expected)
  for name in expected:
    assert loaded[name].tobytes() == expected[name].tobytes(), name
