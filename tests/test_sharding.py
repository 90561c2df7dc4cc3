"""Sharded training: the same results on every mesh and across processes.

Each multi-device run happens in a subprocess (tests/sharding_worker.py) with 8
virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) or as two
processes joined by jax.distributed over gloo on 127.0.0.1; the one-device restores
run the same worker code in the test's own process.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from prompt_tuning.models.t5 import T5Config
from tests import sharding_worker
from tests.conftest import REPO_ROOT, xla_flags

# Every sharded dimension divides 8: vocab 384, heads 8, joined kv 64, mlp 128.
MODEL_CONFIG = T5Config(vocab_size=384, emb_dim=64, num_heads=8, head_dim=8, mlp_dim=128,
                        num_encoder_layers=2, num_decoder_layers=2,
                        relative_attention_num_buckets=16, relative_attention_max_distance=32)
STEPS = 5


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  """A random backbone in T5X's Orbax layout, read by every run."""
  import orbax.checkpoint as ocp
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  path = str(tmp_path_factory.mktemp("backbone"))
  params = params_lib.init_params(T5(MODEL_CONFIG), jax.random.PRNGKey(0))
  ocp.PyTreeCheckpointer().save(os.path.join(path, "checkpoint_0"),
                                {"target": jax.device_get(params)})
  return path


@pytest.fixture(scope="module")
def initial_prompt(backbone):
  """The prompt every run starts from (computed here, on one device)."""
  from prompt_tuning.runtime import setup as model_setup
  from prompt_tuning.runtime.specs import ModelSpec
  setup = model_setup.build(ModelSpec(MODEL_CONFIG, backbone, sharding_worker.prompt_module(backbone)))
  return np.asarray(setup.trainable["encoder_prompt"]["prompt"])


def _assert_moved(prompt, initial, what):
  moved = np.abs(np.asarray(prompt) - initial).max()
  assert moved > 1e-3, f"{what}: the prompt did not train (moved {moved:g})"


def _worker(out, backbone, model_dir, meshes, devices, steps=STEPS, extra_env=None):
  env = dict(os.environ, XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"),
             TF_CPP_MIN_LOG_LEVEL="2", **(extra_env or {}))
  return subprocess.Popen(
      [sys.executable, "-m", "tests.sharding_worker", str(out), backbone, str(model_dir),
       str(steps), *meshes], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _finish(proc):
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def eight_devices(backbone, tmp_path_factory):
  """One 8-device process runs every mesh, and the 2x2 one-process reference of the
  two-process test on 4 of its devices (one process start instead of two)."""
  root = tmp_path_factory.mktemp("eight")
  out = root / "meshes.json"
  _finish(_worker(out, backbone, root, ["1,1@1", "1,8", "2,4", "4,2", "8,1", "2,2@4",
                                        "microbatches"], 8))
  return root, json.load(open(out))


def test_every_mesh_matches_one_device(eight_devices, initial_prompt):
  results = dict(eight_devices[1])
  del results["microbatches"]  # test_microbatches_on_a_sharded_data_axis's
  ref = results.pop("1,1@1")
  assert ref["devices"] == 8 and ref["step"] == STEPS
  assert sorted(results) == ["1,8", "2,2@4", "2,4", "4,2", "8,1"]
  for mesh, r in results.items():
    np.testing.assert_allclose(r["loss"], ref["loss"], rtol=1e-5, err_msg=mesh)
    np.testing.assert_allclose(r["prompt"], ref["prompt"], rtol=1e-5, atol=1e-5, err_msg=mesh)
  # The runs did train: the prompt moved from its initial value.
  _assert_moved(ref["prompt"], initial_prompt, "one device")


def test_microbatches_on_a_sharded_data_axis(eight_devices):
  """One step over k microbatches on a sharded data axis (8x1, k=2; 2x4, k=4) equals the
  single-batch step on one device (tests/test_microbatches.py's tolerance)."""
  from tests.test_microbatches import _assert_close
  results = dict(eight_devices[1]["microbatches"])
  reference = np.asarray(results.pop("1x1 k=1"))
  assert set(results) == {"8x1 k=2", "2x4 k=4"}
  for name, prompt in results.items():
    _assert_close(reference, np.asarray(prompt), name)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_restore_in_one(backbone, initial_prompt, eight_devices,
                                                    tmp_path):
  # One process on 4 devices: the 2x2 run of the 8-device process.
  one_root, one_results = eight_devices
  # Two processes with 2 devices each, talking over loopback.
  port = _free_port()
  multi = tmp_path / "multi.json"
  procs = [_worker(multi, backbone, tmp_path / "two", ["2,2"], 2, extra_env=dict(
      PT_COORDINATOR=f"127.0.0.1:{port}", PT_NUM_PROCESSES="2", PT_PROCESS_ID=str(i)))
      for i in range(2)]
  for p in procs:
    _finish(p)
  a, b = one_results["2,2@4"], json.load(open(multi))["2,2"]
  assert b["processes"] == 2 and b["devices"] == 4 and a["processes"] == 1
  np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
  np.testing.assert_allclose(b["prompt"], a["prompt"], rtol=1e-5, atol=1e-5)
  _assert_moved(b["prompt"], initial_prompt, "two processes")

  # The two-process checkpoint restores in a one-process, one-device run,
  # which continues exactly like the one-process, four-device run does. Both run
  # here, in the test's own one-device process (no process start, no new import).
  assert jax.device_count() == 1 and jax.process_count() == 1
  resumed, cont = tmp_path / "resumed.json", tmp_path / "continued.json"
  sharding_worker.main([str(resumed), backbone, str(tmp_path / "two"), str(STEPS + 2),
                        "1,1@1:2x2"])
  sharding_worker.main([str(cont), backbone, str(one_root), str(STEPS + 2), "1,1@1:2x2_on4"])
  r, c = json.load(open(resumed))["1,1@1"], json.load(open(cont))["1,1@1"]
  assert r["start_step"] == STEPS and c["start_step"] == STEPS
  assert r["step"] == STEPS + 2 and r["devices"] == 1 and r["processes"] == 1
  np.testing.assert_allclose(r["prompt"], c["prompt"], rtol=1e-5, atol=1e-5)
  _assert_moved(r["prompt"], np.asarray(b["prompt"]), "the resumed run's two extra steps")
