"""Start-up environment of the binaries: XLA CPU defaults, quiet logs, compile cache.

Call `configure()` first thing in an entry point, before JAX or TensorFlow is
imported: XLA reads its flags, and TensorFlow its log level, once at import.

- CPU XLA flags (`CPU_XLA_FLAGS`): XLA:CPU's YNNPACK dot fusions are turned off
  so that dots run through XLA's own (Eigen) matmul path. On 2 Intel Xeon
  cores capped at AVX2 the prompt-tuning train step of T5 1.1 small ran
  about 1.2x faster that way, and on an AVX2-only AMD EPYC so did the
  quickstart's pretraining step (benchmarks/README.md, "XLA CPU options").
  Only there: on an AVX-512 CPU jaxlib's own default stays. On an AMD EPYC
  Zen 4 the same step ran at 0.96x jaxlib's default with them off
  (benchmarks/results/amd-epyc-avx512/train_step_xla_defaults.md). On an
  Intel Xeon with AMX (Sapphire Rapids) YNNPACK is what runs bfloat16
  products on the AMX tiles: with its dots off, a bfloat16 product
  accumulating in float32 fell from about 880-1,340 GFLOP/s to about 240,
  and the bfloat16 train step from 1.22 s to 2.16 s, while the float32 step
  was the same either way (1.96 against 2.02 s). XLA's oneDNN flag
  (`xla_cpu_use_onednn`) changed no product there (jaxlib 0.10.2's wheel is
  not built with it), so it is not set. A flag the user already set in
  XLA_FLAGS wins, and PROMPT_TUNING_XLA_DEFAULTS=0 leaves jaxlib's own
  defaults in place.
- Logs: TensorFlow's C++ INFO/WARNING lines are hidden unless the user set
  TF_CPP_MIN_LOG_LEVEL. On a host with no NVIDIA driver, TensorFlow is
  imported once with stderr captured and its CPU-machine noise ("Could not
  find cuda drivers", "failed call to cuInit", the CPU-feature banner)
  filtered out; every other line is passed on. Python warnings and errors,
  and any C++ error that is not on that list, stay visible.
- JAX's persistent compilation cache lives under the project cache
  (`$PROMPT_TUNING_CACHE`, default ~/.cache/prompt_tuning) in `jax_cache/`,
  so a second run compiles nothing it has compiled before.
"""

from __future__ import annotations

import os
import shlex
from typing import Optional

# XLA:CPU's YNNPACK fusions; an empty value turns its dot fusions off.
YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
# Flag name -> value, applied where XLA_FLAGS does not already name the flag.
CPU_XLA_FLAGS = {
    YNN_FUSION_FLAG: "",
}
# The CPU flags that say a core has AMX with bfloat16 tiles.
AMX_CPU_FLAGS = frozenset({"amx_bf16", "amx_tile"})
# The CPU flag of AVX-512 (foundation): where a CPU has it, `CPU_XLA_FLAGS` are left out.
AVX512_CPU_FLAG = "avx512f"
# XLA aborts on a flag it does not know; these defaults were measured with
# jaxlib 0.10.2 and 0.11.2, and are left out for older ones.
_MIN_JAXLIB_FOR_FLAGS = (0, 10)


def project_cache_dir() -> str:
  """The project cache: $PROMPT_TUNING_CACHE, else ~/.cache/prompt_tuning."""
  return os.environ.get("PROMPT_TUNING_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "prompt_tuning"))


def xla_flag_values(flags: str) -> dict[str, str]:
  """Flag name -> value of an XLA_FLAGS string (a flag without `=` reads as "";
  where a flag is named twice, the last value, as XLA reads it)."""
  values = {}
  for token in shlex.split(flags):
    name, _, value = token.lstrip("-").partition("=")
    values[name] = value
  return values


def merged_xla_flags(current: str, defaults: dict[str, str]) -> str:
  """`current` XLA_FLAGS plus each default whose flag `current` does not set."""
  named = xla_flag_values(current)
  extra = [f"--{k}={v}" for k, v in defaults.items() if k not in named]
  return " ".join(shlex.split(current) + extra)


def cpu_flags(cpuinfo_text: Optional[str] = None) -> frozenset[str]:
  """The first CPU's feature flags, from /proc/cpuinfo's text (read when not given;
  empty where there is none, as on macOS)."""
  if cpuinfo_text is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo_text = f.read()
    except OSError:
      return frozenset()
  for line in cpuinfo_text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() in ("flags", "Features"):  # x86, Arm
      return frozenset(value.split())
  return frozenset()


def has_amx(cpuinfo_text: Optional[str] = None) -> bool:
  """Whether the CPU has AMX with bfloat16 tiles (`amx_bf16` and `amx_tile`)."""
  return AMX_CPU_FLAGS <= cpu_flags(cpuinfo_text)


def cpu_xla_defaults(cpuinfo_text: Optional[str] = None) -> dict[str, str]:
  """The XLA flags the binaries default to on this CPU: `CPU_XLA_FLAGS` where it
  lacks AVX-512 (AVX2), none where it has it, with or without AMX (jaxlib's
  defaults measured faster there; with AMX, YNNPACK's dots are its bfloat16
  path)."""
  return {} if AVX512_CPU_FLAG in cpu_flags(cpuinfo_text) else dict(CPU_XLA_FLAGS)


def _jaxlib_version() -> tuple[int, ...]:
  from importlib import metadata
  try:
    return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return (0, 0)


def _has_nvidia_driver() -> bool:
  return os.path.exists("/proc/driver/nvidia/version")


def quiet_logs() -> None:
  """Hides TensorFlow's and absl's start-up noise; keeps warnings that matter."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines
  # TensorFlow's "oneDNN custom operations are on" notice: TensorFlow only feeds
  # the data pipeline here, so its oneDNN kernels buy nothing. A user's value wins.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  try:  # absl's "logging before InitializeLog" banner comes from the same C++ code.
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:
    pass


# Start-up lines of TensorFlow on a machine without a GPU: written by its C++
# code before absl logging is set up, so TF_CPP_MIN_LOG_LEVEL does not hide
# them. Matched line by line; anything else is passed through.
_CPU_NOISE = ("All log messages before absl::InitializeLog() is called",
              "cudart_stub.cc", "failed call to cuInit", "cuda_platform.cc",
              "cuda_diagnostics", "cpu_feature_guard.cc",
              "rebuild TensorFlow with the appropriate compiler flags",
              "Unable to register cu", "oneDNN custom operations are on")


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow (and lets it probe for GPUs) with its CPU-machine noise
  filtered out of stderr; every other line it writes is passed on.

  Only on a host with no NVIDIA driver: where there is one, a CUDA error is
  news and stays visible.
  """
  import sys
  import tempfile
  if _has_nvidia_driver() or "tensorflow" in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as capture:
    os.dup2(capture.fileno(), 2)
    try:
      import tensorflow as tf
      tf.config.list_physical_devices("GPU")  # the cuInit probe, inside the capture
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
    capture.seek(0)
    text = capture.read().decode("utf-8", "replace")
  kept = [line for line in text.splitlines() if line and not any(n in line for n in _CPU_NOISE)]
  if kept:
    sys.stderr.write("\n".join(kept) + "\n")


def enable_compilation_cache(cache_dir: Optional[str] = None) -> str:
  """Turns on JAX's persistent compilation cache; returns its directory."""
  import jax
  path = cache_dir or os.path.join(project_cache_dir(), "jax_cache")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every compilation, small ones too: a CPU run's many small programs
  # (initializers, evaluation) add up to seconds.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def configure(compilation_cache: bool = True, tensorflow: bool = True) -> None:
  """The binaries' start-up: XLA CPU defaults, quiet logs, compilation cache.

  Args:
    compilation_cache: turn on JAX's persistent compilation cache.
    tensorflow: import TensorFlow now, with its CPU-machine noise filtered
      (the binaries read data through seqio, which imports it anyway).
  """
  if (_jaxlib_version() >= _MIN_JAXLIB_FOR_FLAGS
      and os.environ.get("PROMPT_TUNING_XLA_DEFAULTS", "1") != "0"):
    os.environ["XLA_FLAGS"] = merged_xla_flags(os.environ.get("XLA_FLAGS", ""),
                                               cpu_xla_defaults())
  quiet_logs()
  if tensorflow:
    import_tensorflow_quietly()
  if compilation_cache:
    enable_compilation_cache()
