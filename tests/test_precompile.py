"""`prompt-tuning precompile`: T5 1.1 XXL prompt tuning on a 64-device mesh,
compiled on CPU from shapes alone, with per-device memory."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from prompt_tuning.models import params as params_lib
from prompt_tuning.models import presets
from prompt_tuning.models.t5 import T5
from tests.conftest import REPO_ROOT


def test_xxl_prompt_tuning_compiles_for_64_devices():
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.cli.main", "precompile", "--virtual_devices=64",
       "--gin_file=models/t5_1_1_xxl_prompt.gin", "--gin_file=runs/precompile.gin",
       "--gin.MESH_SHAPE=(8, 8)", "--gin.T5Config.scan_layers=True",
       "--gin.T5Config.weight_dtype='bfloat16'", "--gin.T5Config.remat_policy='full'"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout[result.stdout.index("{"):])
  assert report["devices"] == 64 and report["mesh"] == {"data": 8, "model": 8}
  per_device = report["per_device_bytes"]
  # Independently: the XXL backbone in bfloat16, of which each device holds
  # about 1/8 (the model axis) -- unsharded norms and tables add a little.
  shapes, _ = params_lib.abstract_params(T5(presets.preset("t5_1_1", "xxl")))
  backbone_bytes = 2 * params_lib.param_count(shapes)
  assert report["parameters"] - report["trainable_parameters"] == backbone_bytes // 2
  assert backbone_bytes / 8 <= per_device["frozen_params"] < 1.01 * backbone_bytes / 8
  # The prompt: 100 x 4096 float32, replicated; Adafactor state of the same order.
  assert per_device["trainable_params"] == 100 * 4096 * 4
  assert per_device["optimizer_state"] < 2 * per_device["trainable_params"]
  assert per_device["temporaries"] > 0 and report["flops_per_device"] > 0
