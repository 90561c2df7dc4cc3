"""Benchmark results are filed by machine, and each table says what its JSON says."""

import glob
import json
import os

import pytest

from benchmarks import machine, report

RESULT_FILES = sorted(glob.glob(os.path.join(machine.RESULTS, "*", "*.json")))
# Tables written by hand: the partial H100 run's (from its log) and the quickstart's prose.
BY_HAND = {"nvidia-h100/train_step.json", "nvidia-h100/inference.json",
           "amd-epyc-avx2/quickstart.json", "amd-epyc-avx512/quickstart.json"}


def test_results_live_under_results_by_machine():
  # Scripts and the README stay in benchmarks/; every result is filed under results/.
  here = os.path.dirname(machine.RESULTS)
  loose = [f for f in os.listdir(here)
           if f.endswith((".json", ".png")) or (f.endswith(".md") and f != "README.md")]
  assert not loose, loose
  assert RESULT_FILES
  for path in RESULT_FILES:
    assert os.path.exists(os.path.splitext(path)[0] + ".md"), path


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: os.path.relpath(p, machine.RESULTS))
def test_each_table_is_written_from_its_json(path):
  text = report.render(path)
  assert (text is None) == (os.path.relpath(path, machine.RESULTS) in BY_HAND)
  if text is None:
    return
  with open(os.path.splitext(path)[0] + ".md") as f:
    assert f.read() == text, "rerun `python -m benchmarks.report`"


def _recorded_cpu(result):
  """The CPU description a result recorded, wherever its script put it (None if none)."""
  for info in (result.get("machine"), result.get("cpu"), result.get("summary", {}).get("cpu")):
    if isinstance(info, dict) and "cpu_model" in info:
      return info
  return None


def test_each_folder_is_named_by_the_machine_its_results_recorded():
  checked = 0
  for path in RESULT_FILES:
    with open(path) as f:
      info = _recorded_cpu(json.load(f))
    if info is not None:
      assert machine.slug(info) == os.path.basename(os.path.dirname(path)), path
      checked += 1
  assert checked >= 10


@pytest.mark.parametrize("info, slug", [
    (dict(cpu_model="AMD EPYC", avx2=True, avx512=False), "amd-epyc-avx2"),
    (dict(cpu_model="AMD EPYC 7763 64-Core Processor", avx2=True, avx512=False),
     "amd-epyc-7763-avx2"),
    (dict(cpu_model="Intel(R) Xeon(R) Platinum 8480+", avx2=True, avx512=True, amx=True),
     "intel-xeon-platinum-8480-avx512-amx"),
    # XLA capped below what the CPU has: not the uncapped machine's figures.
    (dict(cpu_model="Intel(R) Xeon(R) Processor", avx2=True, avx512=True,
          xla_isa_cap="--xla_cpu_max_isa=AVX2"), "intel-xeon-avx512-capped-avx2"),
    (dict(cpu_model="Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz", avx2=True, avx512=False),
     "intel-core-i7-9700k-avx2"),
    (dict(cpu_model="Neoverse-V2", arch="aarch64", avx2=False, avx512=False),
     "neoverse-v2-aarch64"),
    (dict(cpu_model="AMD EPYC", avx2=True, avx512=False, gpu="NVIDIA H100 80GB HBM3"),
     "nvidia-h100"),
    (dict(cpu_model="AMD EPYC", avx2=True, avx512=False, gpu="NVIDIA A100-SXM4-40GB"),
     "nvidia-a100"),
])
def test_slug_names_the_chip_and_its_isa(info, slug):
  assert machine.slug(info) == slug


def test_a_numpy_only_script_files_under_the_cpu_on_a_gpu_host():
  info = dict(cpu_model="AMD EPYC", avx2=True, avx512=False, gpu="NVIDIA H100 80GB HBM3")
  assert machine.slug(info, accelerator=False) == "amd-epyc-avx2"


def test_cpu_info_has_what_the_tables_and_the_slug_read():
  info = machine.cpu_info()
  assert {"cpu_model", "avx2", "avx512", "amx", "cores", "xla_isa_cap", "gpu",
          "load_average"} <= set(info)
  assert machine.describe(info).startswith(info["cpu_model"])
  assert machine.slug(info)


def test_step_profile_calls_ours_dot_rows_times_only_where_ynnpack_ran_them():
  """Eigen's dot events end at the hand-off to its pool (not times); YNNPACK's
  fusions run inside theirs. Which one ran follows from the recorded XLA flags."""
  from benchmarks import step_profile
  assert step_profile.dots_through_eigen("--xla_cpu_experimental_ynn_fusion_type= --a=1")
  assert not step_profile.dots_through_eigen("--xla_cpu_enable_xprof_traceme=true")
  assert not step_profile.dots_through_eigen("--xla_cpu_experimental_ynn_fusion_type=dot")
  xeon = os.path.join(machine.RESULTS, "intel-xeon-avx512-amx", "step_profile.json")
  epyc = os.path.join(machine.RESULTS, "amd-epyc-avx2", "step_profile.json")
  with open(xeon) as f, open(epyc) as g:
    xeon_result, epyc_result = json.load(f), json.load(g)
  on_xeon, on_epyc = step_profile.markdown(xeon_result), step_profile.markdown(epyc_result)
  assert "not a time" not in on_xeon and "every row of ours is a time" in on_xeon
  assert "ran the same XLA flags" in on_xeon
  matmul = step_profile.summarize(xeon_result["runs"])["ours"]["categories"]["matmul"]
  assert f"| matmul | {matmul:.3f} |" in on_xeon
  assert "not a time" in on_epyc and "hands the work to its own thread pool" in on_epyc
