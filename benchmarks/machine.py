"""The machine a benchmark runs on, and the results folder named after it.

Every script records `cpu_info()` in its JSON, says `describe(info)` in its
markdown, and files its results under `benchmarks/results/<slug>/`
(`results_dir`), where the slug names the CPU model and its vector ISA
(`amd-epyc-avx2`), or the GPU model when JAX runs on one (`nvidia-h100`): a
figure holds on the machine it was measured on, so figures from different
machines never share a file.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# Words of a CPU or GPU name that say nothing about which chip it is (vendor
# marks, memory size and type, form factor, core count, clock).
_NOISE = re.compile(r"^(cpu|processor|\d+gb|hbm\d*e?|gddr\w*|sxm\d*|pcie|nvl)$")


def _proc_cpuinfo() -> tuple[str, set[str]]:
  """The first CPU's model name and ISA flags from /proc/cpuinfo (Linux; empty elsewhere)."""
  model, flags = "", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
          model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86, Arm
          flags = set(value.split())
        if model and flags:
          break
  except OSError:
    pass
  return model, flags


def gpu_name() -> Optional[str]:
  """The first NVIDIA GPU's name (from nvidia-smi, so JAX is not started), or None."""
  if not shutil.which("nvidia-smi"):
    return None
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  names = [line.strip() for line in out.splitlines() if line.strip()]
  return names[0] if names else None


def cpu_info() -> dict[str, Any]:
  """The CPU model, its ISA (AVX2, AVX-512, AMX), the caps in effect on XLA's and
  torch's ISA, the cores this process may use, the GPU if any, the load average."""
  model, flags = _proc_cpuinfo()
  model = model or platform.processor() or "unknown"
  cap = [f for f in os.environ.get("XLA_FLAGS", "").split() if "max_isa" in f]
  return dict(cpu_model=model, arch=platform.machine(), avx512="avx512f" in flags,
              avx2="avx2" in flags, amx="amx_tile" in flags,
              cores=len(os.sched_getaffinity(0)), xla_isa_cap=cap[0] if cap else None,
              aten_cpu_capability=os.environ.get("ATEN_CPU_CAPABILITY"), gpu=gpu_name(),
              load_average=os.getloadavg())


def describe(info: dict[str, Any]) -> str:
  """One line for a report: model, cores, AVX-512 (and AMX where the CPU has it),
  and the XLA ISA cap if one was set."""
  cap = f", XLA capped at {info['xla_isa_cap'].split('=')[1]}" if info["xla_isa_cap"] else ""
  amx = ", AMX: yes" if info.get("amx") else ""
  return (f"{info['cpu_model']}, {info['cores']} cores, AVX-512: "
          f"{'yes' if info['avx512'] else 'no'}{amx}{cap}")


def _words(name: str) -> str:
  """A chip's name as folder words: `AMD EPYC 7763 64-Core Processor` -> `amd-epyc-7763`."""
  name = re.sub(r"\((r|tm)\)|\b\d+-core\b", " ", name.lower().split("@")[0])  # @: the clock
  return "-".join(w for w in re.findall(r"[a-z0-9]+", name) if not _NOISE.match(w))


def isa(info: dict[str, Any]) -> str:
  """The widest vector ISA the CPU has (`avx512`, `avx2`), else its architecture."""
  if info.get("avx512"):
    return "avx512"
  if info.get("avx2"):
    return "avx2"
  return (info.get("arch") or "cpu").lower()


def slug(info: Optional[dict[str, Any]] = None, accelerator: bool = True) -> str:
  """The results folder's name for a machine (`cpu_info()` when not given).

  With a GPU (and `accelerator`, for scripts whose work JAX puts on it): the
  GPU's model, `nvidia-h100`. Otherwise the CPU's model and widest vector ISA,
  `amd-epyc-avx2`, with `-amx` where it has AMX; with XLA's ISA capped below
  it, `-capped-<cap>` (`intel-xeon-avx512-capped-avx2`), since such figures
  are not the uncapped machine's.
  """
  info = cpu_info() if info is None else info
  if accelerator and info.get("gpu"):
    return _words(info["gpu"])
  native = isa(info)
  cap = (info.get("xla_isa_cap") or "").partition("=")[2].lower()
  if cap and cap != native:
    return f"{_words(info['cpu_model'])}-{native}-capped-{cap}"
  return f"{_words(info['cpu_model'])}-{native}" + ("-amx" if info.get("amx") else "")


def results_dir(machine: Optional[str] = None) -> str:
  """benchmarks/results/<machine>/ (this machine's slug when not given), created."""
  path = os.path.join(RESULTS, machine or slug())
  os.makedirs(path, exist_ok=True)
  return path
