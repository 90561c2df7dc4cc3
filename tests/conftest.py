"""Shared test setup: strict numerics, tiny configs, the shared fixtures policy.

Fixtures live in ../shared/fixtures (never copied into the repo). A test that
needs one is skipped with the reason when the folder is absent, and fails
instead when PT_REQUIRE_FIXTURES=1 (CI sets it).
"""

import contextlib
import os
import shutil

# The suite's models are tiny, so on a CPU compiling their programs costs far more
# than running them: about two thirds of an in-process test's CPU time on a cold
# compilation cache, as CI has. JAX's `jax_disable_most_optimizations` (LLVM at -O0,
# no expensive passes) with XLA:CPU's older loop emitters compiles a tiny T5's train
# step in about 40% of the time, and runs it about 1.6x slower. Both change how fast
# the code runs, not what it computes (no fast-math either way). The binaries'
# subprocesses inherit them through the environment, so every process of the suite
# compiles alike. Tests that run hundreds of steps turn the optimizations back on
# (`optimized_compiles` below). LLVM's code for a program is also compiled as one
# module instead of XLA's default split into parallel pieces, which costs more than
# it saves on 2 cores for these small programs: on two compile-bound files
# (tests/test_deep_prompts.py and tests/test_ia3.py) four alternating pairs on a
# shared Sapphire Rapids Xeon took 0.90, 0.87, 0.94 and 1.02 times the user CPU
# (7% less on the mean; the machine's own speed drifted by a third meanwhile). A
# value already in the environment wins, flag by flag.
TEST_XLA_FLAGS = {"xla_cpu_use_fusion_emitters": "false",
                  "xla_cpu_parallel_codegen_split_count": "1"}


def xla_flags(*extra: str) -> str:
  """XLA_FLAGS for a subprocess of the suite: the suite's flags plus `extra`."""
  return " ".join([os.environ.get("XLA_FLAGS", ""), *extra]).strip()


from prompt_tuning.cli import environment as _environment  # noqa: E402  (imports no JAX)

os.environ["XLA_FLAGS"] = _environment.merged_xla_flags(os.environ.get("XLA_FLAGS", ""),
                                                        TEST_XLA_FLAGS)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from prompt_tuning.models.t5 import T5Config  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("PT_FIXTURES_DIR",
                          os.path.join(os.path.dirname(REPO_ROOT), "shared", "fixtures"))


def fixture_path(*parts: str) -> str:
  """Absolute path of a shared fixture; skips (or fails under CI) when absent."""
  path = os.path.join(FIXTURES, *parts)
  if not os.path.exists(path):
    message = (f"shared fixture {os.path.join(*parts)} not found under {FIXTURES} "
               "(the ../shared checkout is absent)")
    if os.environ.get("PT_REQUIRE_FIXTURES") == "1":
      pytest.fail(message + "; PT_REQUIRE_FIXTURES=1 requires it")
    pytest.skip(message)
  return path


# The architecture of ../shared/fixtures/t5x_tiny_checkpoint (see its README).
TINY_T5X_CONFIG = T5Config(vocab_size=32128, emb_dim=4, num_heads=2, num_encoder_layers=2,
                           num_decoder_layers=2, head_dim=2, mlp_dim=8,
                           relative_attention_num_buckets=4, relative_attention_max_distance=8)
# ../shared/fixtures/t5x_inline_checkpoint.
INLINE_T5X_CONFIG = T5Config(vocab_size=32128, emb_dim=8, num_heads=4, num_encoder_layers=2,
                             num_decoder_layers=2, head_dim=3, mlp_dim=16)

# A small random model for tests that need no checkpoint.
TINY_CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
                       num_decoder_layers=2, head_dim=8, mlp_dim=32,
                       relative_attention_num_buckets=8, relative_attention_max_distance=16)


# --- the order under pytest-xdist (tests/scheduling.py) ----------------------------

def _distributed_by_load(config) -> bool:
  return config.getoption("dist", "no") == "load"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """`-n`'s default `load` schedule becomes tests/scheduling.py's; an explicit
  `--dist` other than `load` is left alone."""
  if _distributed_by_load(config):
    from tests import scheduling
    return scheduling.make_scheduler(config, log)
  return None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
  """Tells each worker to collect in that schedule's order (a worker's own `--dist`
  reads "no")."""
  node.workerinput["slowest_first"] = _distributed_by_load(node.config)


def pytest_collection_modifyitems(config, items):
  """Under `-n`, each worker collects in the same order: slowest first, in units."""
  if getattr(config, "workerinput", {}).get("slowest_first"):
    from tests import scheduling
    items[:] = scheduling.slowest_first(items, lambda item: item.nodeid)


def require_miniature_xs() -> None:
  """Skips, with the one line naming the command, where the miniature's corpus or its
  `xs` backbone is not made (the research experiments' quick runs need them)."""
  from prompt_tuning.miniature import family as mini
  from prompt_tuning.tasks import miniature
  try:
    miniature.find()
    mini.require("xs", mini.PretrainConfig())
  except miniature.NotMade as e:
    pytest.skip(str(e))


def assert_claims_well_formed(claims) -> None:
  """Each research claim has a verdict word; a tested one has p in [0, 1] and a finite
  95% interval, an untested one says why it is not testable here."""
  import math
  from benchmarks.research import stats
  for c in claims:
    assert stats.is_verdict(c["verdict"]), c
    if c["p"] is not None:
      assert 0.0 <= c["p"] <= 1.0 and len(c["ci"]) == 2 and all(map(math.isfinite, c["ci"])), c
    else:
      assert c["verdict"].startswith(stats.NOT_TESTABLE + ": "), c


def report_only_again(experiment, name: str, res, tmp):
  """Runs a research experiment's `--quick --report_only` over its quick run's folder
  `tmp`; asserts that it re-derives the same claims and methods, rewrites
  `name`_quick.md byte for byte and trains nothing; returns its result."""
  report = tmp / "out" / f"{name}_quick.md"
  text = open(report).read()
  again = experiment.main(["--quick", "--report_only", "--out", str(tmp / "out"),
                           "--work_dir", str(tmp / "nothing_runs_here")])
  assert again["claims"] == res["claims"] and again["methods"] == res["methods"]
  assert open(report).read() == text
  assert not os.path.exists(tmp / "nothing_runs_here")
  return again


@contextlib.contextmanager
def optimized_compiles():
  """JAX's optimizations back on for the programs compiled inside, for a test that runs
  hundreds of steps (its run time outweighs the compile time saved). The loop emitters
  stay: with the optimizations on they ran a tiny T5's train step as fast as the default."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def optimized():
  """`optimized_compiles` for one test."""
  with optimized_compiles():
    yield


@pytest.fixture
def tiny_config():
  return TINY_CONFIG


def files_digest(path: str, suffix: str = "") -> str:
  """SHA-256 of a file, or of a folder's files (names and contents, in a fixed order);
  with `suffix`, only the folder's files whose names end with it."""
  import hashlib
  h = hashlib.sha256()
  if os.path.isfile(path):
    with open(path, "rb") as f:
      h.update(f.read())
    return h.hexdigest()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(n for n in files if n.endswith(suffix)):
      with open(os.path.join(root, name), "rb") as f:
        h.update(os.path.relpath(os.path.join(root, name), path).encode() + b"\0" + f.read())
  return h.hexdigest()


# --- the binary in a fresh process, on the T5X fixture ---------------------------------
# Shared by the tests that meet the binaries as a user does (locks, argument checks,
# preemption, damaged checkpoints, infer's output).

CLI_LENGTHS = "{'inputs': 16, 'targets': 4}"
PROMPT_NPY = "encoder_prompt.prompt.npy"


def cli_argv(command: str, model_dir, model_gin, *extra) -> list[str]:
  """`prompt-tuning COMMAND`'s arguments for pt_test_sentiment on the T5X fixture."""
  run_file = {"train": "runs/prompt_finetune.gin", "infer": "runs/prompt_infer.gin",
              "eval": "runs/prompt_eval.gin"}[command]
  return [command, f"--gin_file={model_gin}", f"--gin_file={run_file}",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='pt_test_sentiment'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
          f"--gin.TASK_FEATURE_LENGTHS={CLI_LENGTHS}", "--gin.BATCH_SIZE=8", *extra]


def cli_env(**faults_set) -> dict[str, str]:
  """The environment for a fresh binary: no fault injected unless named here."""
  from prompt_tuning.runtime import faults
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  for name in (faults.ENV, faults.DISK_FULL_ENV, faults.SIGTERM_ENV):
    env.pop(name, None)
  env.update({k: str(v) for k, v in faults_set.items()})
  return env


def run_cli(command: str, model_dir, *extra, model_gin=None, env=None, timeout=600):
  """Runs the binary in a fresh process; returns the CompletedProcess. The model gin
  defaults to tiny_model.gin beside MODEL_DIR (the `workdir` fixture writes one)."""
  import subprocess
  import sys
  model_gin = model_gin or os.path.join(os.path.dirname(model_dir), "tiny_model.gin")
  return subprocess.run(
      [sys.executable, "-m", "prompt_tuning.cli.main",
       *cli_argv(command, model_dir, model_gin, *extra)],
      cwd=REPO_ROOT, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def error_line(stderr: str) -> str:
  """The binary's one error line (exactly one, and no traceback)."""
  lines = [line for line in stderr.splitlines() if line.startswith("prompt-tuning")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


def exported_prompt(model_dir, step: int):
  """The encoder prompt a run exported at a step."""
  import numpy as np
  return np.load(os.path.join(model_dir, "prompts", f"step_{step}", PROMPT_NPY))


def checkpoint_steps(model_dir) -> list[int]:
  """The steps of MODEL_DIR's checkpoints, as the library sees them."""
  from prompt_tuning.runtime import checkpoints as checkpoints_lib
  store = checkpoints_lib.CheckpointStore(str(model_dir))
  try:
    return store.all_steps()
  finally:
    store.close()


def leftovers(root) -> list[str]:
  """Temporary folders or files anywhere under root."""
  return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files
          if "tmp" in n and "orbax" in n or n.endswith(".tmp")]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
  """A folder with tiny_model.gin (the T5X fixture's model and the test tasks), for
  runs of `run_cli`; each test uses its own subfolder."""
  from tests.test_binaries import TINY_MODEL_GIN
  fixture_path("t5_spm.model")
  root = tmp_path_factory.mktemp("binary_runs")
  (root / "tiny_model.gin").write_text(TINY_MODEL_GIN)
  return root


def built_once(workdir, tmp_path_factory, name: str, build) -> str:
  """The folder `name` that `build(folder)` fills, built once per session.

  Under pytest-xdist the workers share it: the first to need it builds it in the
  session's common temporary folder while the others wait on a file lock (a binary
  start costs more than a tiny run). The folder holds a copy of tiny_model.gin, so
  `run_cli` finds it beside a run made there.
  """
  import fcntl
  if "PYTEST_XDIST_WORKER" not in os.environ:  # Not under xdist: one process, one build.
    root = workdir
  else:
    root = tmp_path_factory.getbasetemp().parent / "shared_binary_runs"
    root.mkdir(exist_ok=True)
  folder, done = root / name, root / f"{name}.done"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not done.exists():
      (root / "tiny_model.gin").write_text((workdir / "tiny_model.gin").read_text())
      shutil.rmtree(folder, ignore_errors=True)  # What a failed attempt left.
      build(str(folder))
      done.touch()
  return str(folder)


@pytest.fixture(scope="session")
def straight(workdir, tmp_path_factory):
  """An uninterrupted 6-step run, checkpoints every 2 steps (the reference); tests that
  change a run, or run a binary on it, copy it first. One per session (`built_once`)."""
  def build(run):
    result = run_cli("train", run, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2")
    assert result.returncode == 0, result.stderr[-3000:]
  return built_once(workdir, tmp_path_factory, "straight", build)


@pytest.fixture(scope="session")
def stale_lock_run(workdir, tmp_path_factory):
  """A 1-step training over a lock left by a process that no longer runs, with an unused
  binding allowed (--gin.TRAIN_STEPZ=3 --gin.allow_unused=True): one binary start
  serves the test of the lock's takeover and that of allow_unused, which both read its
  log lines. Returns (MODEL_DIR, the dead pid, the CompletedProcess)."""
  import json
  import socket
  import subprocess
  from prompt_tuning.runtime import lock as lock_lib

  def build(folder):
    run = os.path.join(folder, "run")
    os.makedirs(run)
    gone = subprocess.Popen(["true"])
    gone.wait()  # A pid that no longer runs.
    with open(os.path.join(run, lock_lib.LOCK_NAME), "w") as f:
      json.dump(dict(host=socket.gethostname(), pid=gone.pid, started="yesterday",
                     token="old"), f)
    result = run_cli("train", run, "--gin.TRAIN_STEPS=1", "--gin.TRAIN_STEPZ=3",
                     "--gin.allow_unused=True", model_gin=str(workdir / "tiny_model.gin"))
    with open(os.path.join(folder, "result.json"), "w") as f:
      json.dump(dict(args=result.args, returncode=result.returncode, stdout=result.stdout,
                     stderr=result.stderr, pid=gone.pid), f)

  folder = built_once(workdir, tmp_path_factory, "stale_lock", build)
  with open(os.path.join(folder, "result.json")) as f:
    saved = json.load(f)
  result = subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"],
                                       saved["stderr"])
  return os.path.join(folder, "run"), saved["pid"], result


@pytest.fixture
def main_in_process(workdir, tmp_path, capsys, monkeypatch):
  """Runs main() in-process with the backbone reader made to fail if it is reached."""
  import gin
  from prompt_tuning import readers
  from prompt_tuning.cli import main as main_lib

  def must_not_read(*args, **kwargs):
    raise AssertionError("the backbone was read before the arguments were checked")
  monkeypatch.setattr(readers, "load_params", must_not_read)

  def _run(*extra, command="train", model_gin=str(workdir / "tiny_model.gin")):
    gin.clear_config()
    capsys.readouterr()
    steps = ["--gin.TRAIN_STEPS=2"] if command == "train" else []
    code = main_lib.main(cli_argv(command, str(tmp_path / "model_dir"), model_gin, *steps,
                                  *extra))
    gin.clear_config()
    return code, capsys.readouterr().err
  return _run


@pytest.fixture
def cli_in_process(capfd):
  """Runs the binary's `main()` in this process with `run_cli`'s arguments, and returns
  a CompletedProcess of its exit code and what it printed (caught at the file
  descriptors). It saves a fresh interpreter's start (the imports cost more than a
  tiny run) where a check needs no process of its own: no signal, no fault injected,
  no log line asserted (logging is configured once per process).
  """
  import subprocess
  import gin
  from prompt_tuning.cli import main as main_lib

  def _run(command, model_dir, *extra, model_gin=None):
    model_gin = model_gin or os.path.join(os.path.dirname(model_dir), "tiny_model.gin")
    argv = cli_argv(command, model_dir, model_gin, *extra)
    gin.clear_config()
    capfd.readouterr()
    try:
      code = main_lib.main(argv)
    finally:
      gin.clear_config()
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)
  return _run
