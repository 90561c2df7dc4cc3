"""The binaries' start-up environment: XLA defaults, quiet logs, compilation cache."""

import os
import subprocess
import sys

import pytest

from prompt_tuning.cli import environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_xla_defaults_never_override_the_users_flags():
  defaults = {"xla_a": "", "xla_b": "1"}
  assert environment.merged_xla_flags("", defaults) == "--xla_a= --xla_b=1"
  assert environment.merged_xla_flags("--xla_b=0 --xla_dump_to=/d", defaults) == (
      "--xla_b=0 --xla_dump_to=/d --xla_a=")
  assert environment.merged_xla_flags("--xla_a=dot", defaults) == "--xla_a=dot --xla_b=1"


def test_the_cpu_defaults_can_be_turned_off(monkeypatch):
  monkeypatch.setattr(environment, "quiet_logs", lambda: None)
  # The same on any CPU: an AVX2 one, where the YNNPACK default applies.
  monkeypatch.setattr(environment, "cpu_flags", lambda text=None: frozenset({"avx2"}))
  for switch, expected in (("0", "--xla_dump_to=/d"),
                           ("1", "--xla_dump_to=/d --xla_cpu_experimental_ynn_fusion_type=")):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/d")
    monkeypatch.setenv("PROMPT_TUNING_XLA_DEFAULTS", switch)
    environment.configure(compilation_cache=False, tensorflow=False)
    assert os.environ["XLA_FLAGS"] == expected, switch


_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 {extra} arch_capabilities
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile
"""


@pytest.mark.parametrize("extra, amx, ynn_off", [
    ("avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", True, False),  # Sapphire Rapids
    ("avx512f avx512_bf16 amx_tile", False, False),  # tiles without bfloat16 support
    ("avx512f avx512_bf16", False, False),  # an AVX-512 CPU without AMX (e.g. AMD Zen 4)
    ("", False, True),                      # AVX2 only (the second CPU's flags are not read)
])
def test_amx_and_avx512_are_read_from_the_first_cpus_flags(extra, amx, ynn_off):
  text = _CPUINFO.format(extra=extra)
  assert environment.has_amx(text) is amx
  defaults = environment.cpu_xla_defaults(text)
  # YNNPACK dot fusions off only where it measured faster (AVX2). On AVX-512
  # jaxlib's default measured faster, and with AMX YNNPACK is the bfloat16 path
  # onto the tiles. XLA's oneDNN flag is never set (it changed nothing there).
  assert (environment.CPU_XLA_FLAGS.items() <= defaults.items()) is ynn_off
  assert ("xla_cpu_experimental_ynn_fusion_type" in defaults) is ynn_off
  assert "xla_cpu_use_onednn" not in defaults
  assert not environment.has_amx("no flags line here")
  assert environment.cpu_xla_defaults("no flags line here") == environment.CPU_XLA_FLAGS


def test_the_users_xla_flags_win_over_the_defaults():
  defaults = environment.cpu_xla_defaults(_CPUINFO.format(extra=""))
  assert environment.merged_xla_flags("--xla_cpu_experimental_ynn_fusion_type=dot",
                                      defaults) == "--xla_cpu_experimental_ynn_fusion_type=dot"
  assert environment.merged_xla_flags("--xla_cpu_use_onednn=true", defaults) == (
      "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type=")


def test_xla_flag_values_reads_each_flag_as_xla_does():
  assert environment.xla_flag_values(
      "--a=1 --xla_cpu_experimental_ynn_fusion_type=dot --b --a=2 --c=\"\"") == {
          "a": "2", "xla_cpu_experimental_ynn_fusion_type": "dot", "b": "", "c": ""}
  assert environment.xla_flag_values("") == {}


def test_configure_keeps_ynnpack_where_the_cpu_has_amx(monkeypatch):
  monkeypatch.setattr(environment, "quiet_logs", lambda: None)
  monkeypatch.setenv("PROMPT_TUNING_XLA_DEFAULTS", "1")
  for cpu, ynn_off in (({"avx2", "avx512f"} | environment.AMX_CPU_FLAGS, False),
                       ({"avx2"}, True)):
    monkeypatch.setattr(environment, "cpu_flags", lambda text=None, cpu=cpu: frozenset(cpu))
    monkeypatch.setenv("XLA_FLAGS", "")
    environment.configure(compilation_cache=False, tensorflow=False)
    assert ("--xla_cpu_experimental_ynn_fusion_type=" in os.environ["XLA_FLAGS"]) is ynn_off


_PROGRAM = """
import sys, warnings
from prompt_tuning.cli import environment
environment.configure(tensorflow=sys.argv[1] == "tf")
import jax, jax.numpy as jnp
print(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((4, 4))).sum())
warnings.warn("a real warning")
"""


def _run(cache, mode):
  env = dict(os.environ, PROMPT_TUNING_CACHE=str(cache), PYTHONPATH=ROOT)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  return subprocess.run([sys.executable, "-c", _PROGRAM, mode], env=env, capture_output=True,
                        text=True, check=True, timeout=300)


def test_second_run_compiles_nothing_new_and_the_first_screen_is_clean(tmp_path):
  first = _run(tmp_path, "tf")
  cache = tmp_path / "jax_cache"
  entries = sorted(os.listdir(cache))
  assert entries, "the first run should have written its compiled programs"
  second = _run(tmp_path, "no-tf")
  assert sorted(os.listdir(cache)) == entries  # every program came from the cache
  assert first.stdout == second.stdout
  assert "a real warning" in first.stderr  # real warnings still show
  if not os.path.exists("/proc/driver/nvidia/version"):  # CPU machine: no CUDA noise
    for noise in ("cuInit", "cudart_stub", "Could not find cuda drivers", "InitializeLog"):
      assert noise not in first.stderr, first.stderr


def test_synthetic_sources_read_without_the_uncached_warning(caplog):
  pytest.importorskip("seqio")
  import logging
  from prompt_tuning.tasks import synthetic
  source = synthetic._source("reverse", True)
  with caplog.at_level(logging.WARNING):
    shuffled = [ex["targets"] for ex in source.get_dataset("validation", shuffle=True,
                                                             seed=3).as_numpy_iterator()]
  assert not [r for r in caplog.records if "uncached FunctionDataset" in r.getMessage()]
  plain = [ex["targets"] for ex in source.get_dataset("validation", shuffle=False)
           .as_numpy_iterator()]
  assert shuffled == plain and len(plain) == synthetic.SPLIT_SIZES["validation"]
