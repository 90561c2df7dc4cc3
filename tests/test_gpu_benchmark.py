"""benchmarks/gpu.py: the prepared GPU run, exercised on the CPU by its dry run."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import pytest

from benchmarks import gpu, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(words):
  return {tuple(r.get(k) for k in ("kind", "size", "dtype", "system", "workload", "library"))
          for r in gpu.expected_rows(words)}


def test_dry_run_measures_every_row_and_states_the_targets(tmp_path):
  # The whole script, as a user runs it; a generous budget, since the CPU is shared.
  out = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run", "--out_dir",
                        str(tmp_path), "--budget_s", "900"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.load(open(tmp_path / "gpu.json"))
  assert result["complete"] and result["dry_run"]
  measured = [r for r in result["rows"] if not (r.get("cut") or r.get("skipped"))]
  assert not [r for r in result["rows"] if r.get("cut") or r.get("skipped")], result["rows"]
  want = set()
  for job in gpu.plan(gpu.Shapes(dry_run=True)):
    want |= _rows(job)
  got = {tuple(r.get(k) for k in ("kind", "size", "dtype", "system", "workload", "library"))
         for r in measured}
  assert got == want
  # Every train row for every system at both precisions, and the three decoding workloads.
  assert {(r["system"], r["dtype"]) for r in measured if r["kind"] == "train"} == {
      (s, d) for s in ("ours", "peft_eager", "peft_compile") for d in gpu.DTYPES}
  # bfloat16 compute keeps float32 prompt and optimizer state, on both sides.
  for r in measured:
    if r["kind"] == "train":
      assert r["trainable_and_optimizer_dtypes"] == ["float32"], r
  table = open(tmp_path / "gpu.md").read()
  assert table == report.render(str(tmp_path / "gpu.json"))
  assert "at least 1.2x PEFT under torch.compile" in table and "at least 3.0x HF" in table
  assert "MFU there at least 40%" in table and "not measured" not in table
  # Both sides ran the same model: the greedy tokens agree.
  assert "100.0% of greedy tokens agree" in table


def test_a_run_out_of_budget_files_its_rows_as_cut(tmp_path):
  gpu.main(["--dry-run", "--out_dir", str(tmp_path), "--budget_s", "0"])
  result = json.load(open(tmp_path / "gpu.json"))
  assert result["complete"] and result["rows"]
  assert all("budget ran out before it started" in r["cut"] for r in result["rows"])
  table = open(tmp_path / "gpu.md").read()
  assert "Not measured:" in table and "not measured" in table


def test_each_row_is_on_disk_as_soon_as_it_is_added(tmp_path):
  args = gpu.argparse.Namespace(dry_run=True, out_dir=str(tmp_path), budget_s=10, note="",
                                machine=None)
  run = gpu.Run(args, gpu.Shapes(dry_run=True))
  assert json.load(open(tmp_path / "gpu.json"))["rows"] == []
  run.add(dict(kind="matmul", library="xla", dtype="float32", n=128, gflops=12.0))
  on_disk = json.load(open(tmp_path / "gpu.json"))
  assert on_disk["rows"][0]["gflops"] == 12.0 and not on_disk["complete"]
  assert "Incomplete" in open(tmp_path / "gpu.md").read()


def test_without_cuda_in_torch_the_peft_rows_are_skipped_with_the_reason():
  torch = pytest.importorskip("torch")
  if torch.cuda.is_available():
    pytest.skip("this torch has CUDA")
  jobs = [dict(kind="train", size="base", dtype="bfloat16", system="peft_eager")]
  printed = io.StringIO()
  with redirect_stdout(printed):
    assert gpu._torch_setup(False, jobs) is None  # a GPU run: no CPU fallback
  row = json.loads(printed.getvalue().split("ROW ", 1)[1])
  assert "no CUDA" in row["skipped"] and "ours are measured" in row["skipped"]
  assert gpu._torch_setup(True, jobs)[1] == "cpu"  # the dry run uses the CPU


def test_the_plan_runs_the_targets_first_and_every_size():
  jobs = gpu.plan(gpu.Shapes(dry_run=False))
  names = [j[0] for j in jobs]
  assert names[:2] == ["xla_matmul", "torch_matmul"]
  assert jobs[2] == ["ours_train", "base", "bfloat16,float32"]
  first_small = next(i for i, j in enumerate(jobs) if "small" in j)
  assert names.index("ours_decode") < first_small
  assert {j[1] for j in jobs if j[0].endswith("_train")} == {"small", "base", "large"}
  assert {j[2] for j in jobs if j[0] == "peft_train"} == {"eager", "compile"}


def test_step_flops_at_small_shapes_is_train_steps_count():
  from benchmarks import train_step
  cfg = gpu.model_config("small")
  shapes = gpu.Shapes(dry_run=False)
  shapes.batch, shapes.input_len, shapes.prompt_len, shapes.target_len = (
      train_step.BATCH, train_step.INPUT_LEN, train_step.PROMPT_LEN, train_step.TARGET_LEN)
  assert gpu.train_flops(cfg, shapes) == train_step.step_flops()
  assert gpu.train_flops(gpu.model_config("base"), shapes) > 2 * train_step.step_flops()
