"""The shape of the code: one-way layers, a fast command-line edge, one source per fact."""

import ast
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "prompt_tuning")

# Bottom to top. A module may import its own layer or lower ones, never higher;
# and no two packages import each other, in one layer or across layers
# (test_packages_import_one_way). The quickstart is a demo: it sits alone just
# below the command-line edge, so no library module may import it.
LAYERS = [
    {"trees", "registry", "layout"},
    {"models"},
    {"readers"},
    {"prompts"},
    {"decoding", "runtime", "tasks"},
    {"train"},
    {"evaluation", "precompile", "retrieval", "serving", "interop"},
    {"backbones"},
    {"miniature"},
    {"recycling"},
    {"quickstart"},
    {"cli", "eval", "infer", "__main__"},
]


def _layer(module: str) -> int:
  """The layer of 'prompt_tuning.<top>....'; `python -m` shims are the command-line edge."""
  if module.endswith(".__main__"):
    return len(LAYERS) - 1
  top = module.split(".")[1]
  for i, names in enumerate(LAYERS):
    if top in names:
      return i
  raise AssertionError(f"{module}: top-level name {top!r} is in no layer of LAYERS; add it")


def _modules() -> dict[str, str]:
  """'prompt_tuning.x.y' -> file, for the package and the tasks/ folder it installs."""
  out = {}
  for root, base in ((PACKAGE, "prompt_tuning"),
                     (os.path.join(REPO_ROOT, "tasks"), "prompt_tuning.tasks")):
    for folder, _, files in os.walk(root):
      if "__pycache__" in folder or (root == PACKAGE and os.path.islink(folder)):
        continue
      rel = os.path.relpath(folder, root)
      for f in files:
        if not f.endswith(".py"):
          continue
        parts = [base] + ([] if rel == "." else rel.split(os.sep))
        if f != "__init__.py":
          parts.append(f[:-3])
        out[".".join(parts)] = os.path.join(folder, f)
  return out


def _imports(module: str, path: str, known: set[str]) -> set[str]:
  """Every prompt_tuning module `path` imports, at any depth (deferred imports too)."""
  tree = ast.parse(open(path).read(), path)
  package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    else:
      continue
    for name in names:
      while name and name not in known:  # `from pkg import symbol` -> pkg
        name = name.rpartition(".")[0]
      if name and name != module:
        found.add(name)
  return found


def _graph() -> dict[str, set[str]]:
  """'prompt_tuning.x.y' -> the package's modules it imports."""
  modules = _modules()
  return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def _back_arrows(graph: dict[str, set[str]]) -> list[str]:
  """Every import from a lower layer up to a higher one."""
  return sorted(f"{m} ({_layer(m)}) imports {d} ({_layer(d)})"
                for m, deps in graph.items() if m != "prompt_tuning"
                for d in deps if d != "prompt_tuning" and _layer(d) > _layer(m))


def _cycle(graph: dict[str, set[str]], related=lambda a, b: False) -> list[str]:
  """One cycle of `graph` as [a, b, ..., a], or [] (arrows between `related` nodes skipped)."""
  state: dict[str, int] = {}

  def visit(m, stack):
    state[m] = 1
    for d in sorted(graph.get(m, ())):
      if related(m, d):
        continue
      if state.get(d) == 1:
        return stack[stack.index(d):] + [d]
      if d not in state:
        found = visit(d, stack + [d])
        if found:
          return found
    state[m] = 2
    return []

  for m in sorted(graph):
    if m not in state:
      found = visit(m, [m])
      if found:
        return found
  return []


def _package(module: str) -> str:
  """The top-level name a module belongs to; `python -m` shims belong to the edge."""
  return "__main__" if module.endswith(".__main__") else module.split(".")[1]


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  """Top-level name -> the other top-level names its modules import."""
  out: dict[str, set[str]] = {}
  for m, deps in graph.items():
    if m == "prompt_tuning":
      continue
    out.setdefault(_package(m), set()).update(
        _package(d) for d in deps if d != "prompt_tuning" and _package(d) != _package(m))
  return out


def test_imports_run_one_way_and_have_no_cycles():
  graph = _graph()
  back = _back_arrows(graph)
  assert not back, "imports from a lower layer to a higher one:\n" + "\n".join(back)
  # No module-level cycle, deferred imports included: a cycle that works only
  # because the use happens at call time is still a cycle.
  cycle = _cycle(graph, lambda m, d: d.startswith(m + ".") or m.startswith(d + "."))
  assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_packages_import_one_way():
  """Two packages that import each other are one package in two folders, even
  when no single module cycle shows it (runtime/setup -> train/freezing while
  train/loop -> runtime/setup was such a pair)."""
  cycle = _cycle(_package_graph(_graph()))
  assert not cycle, "packages import each other: " + " -> ".join(cycle)


def test_the_layer_check_catches_a_back_arrow(tmp_path):
  """The walk above would see a deferred import from models up to runtime."""
  fake = tmp_path / "bad.py"
  fake.write_text("def f():\n  from prompt_tuning.runtime import setup\n")
  deps = _imports("prompt_tuning.models.bad", str(fake),
                  {"prompt_tuning.runtime", "prompt_tuning.runtime.setup"})
  assert "prompt_tuning.runtime.setup" in deps
  assert _layer("prompt_tuning.runtime.setup") > _layer("prompt_tuning.models.bad")


def test_the_checks_catch_runtime_importing_train(tmp_path):
  """runtime/setup.py used to import train/freezing: both checks report that arrow."""
  fake = tmp_path / "x.py"
  fake.write_text("from prompt_tuning.train import freezing\n")
  graph = _graph()
  graph["prompt_tuning.runtime.x"] = _imports(
      "prompt_tuning.runtime.x", str(fake), set(graph) | {"prompt_tuning.train.freezing"})
  assert [a for a in _back_arrows(graph)
          if a.startswith("prompt_tuning.runtime.x ") and "prompt_tuning.train.freezing" in a]
  cycle = _cycle(_package_graph(graph))
  assert cycle and {"runtime", "train"} <= set(cycle), cycle


def test_only_the_command_line_imports_the_demo():
  """The quickstart's library half is `backbones`, which the library may use."""
  demo = _layer("prompt_tuning.quickstart")
  assert LAYERS[demo] == {"quickstart"} and demo == len(LAYERS) - 2
  assert _layer("prompt_tuning.backbones") < _layer("prompt_tuning.recycling.harness") < demo


_HELP_PROBE = """
import sys
from prompt_tuning.cli import main
try:
  main.main(sys.argv[1:] + ['--help'])
except SystemExit as e:
  code = e.code
heavy = sorted(m for m in ('jax', 'tensorflow', 'flax', 'seqio') if m in sys.modules)
print('HEAVY=' + ','.join(heavy) + ' CODE=' + str(code))
"""


@pytest.mark.parametrize("command,must_say", [
    ([], ["train", "eval", "infer", "precompile", "quickstart", "recycle"]),
    (["train"], ["runs/prompt_finetune.gin", "MODEL_DIR", "MIXTURE_OR_TASK_NAME",
                 "INITIAL_CHECKPOINT_PATH", "Example", "--gin_file", "--gin.NAME=VALUE"]),
    (["eval"], ["runs/prompt_eval.gin", "MODEL_DIR", "EVAL_SPLIT", "Example"]),
    (["infer"], ["runs/prompt_infer.gin", "INFER_SPLIT", "Example"]),
    (["precompile"], ["runs/precompile.gin", "MESH_SHAPE", "Example"]),
    (["quickstart"], ["--pretrain_steps"]),
])
def test_help_prints_usage_without_importing_jax_or_tensorflow(command, must_say):
  result = subprocess.run([sys.executable, "-c", _HELP_PROBE, *command], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "HEAVY= CODE=0" in result.stdout, result.stdout[-500:]
  for text in must_say:
    assert text in result.stdout, (text, result.stdout[:1500])


def test_unknown_flags_and_bad_bindings_are_one_line_errors(capsys):
  from prompt_tuning.cli import main
  assert main.main(["train", "--gin_file=x.gin", "--bogus=1"]) == 2
  assert "unknown arguments ['--bogus=1']" in capsys.readouterr().err
  assert main.main(["train", "--gin.MODEL_DIR"]) == 2
  assert "expected --gin.NAME=VALUE" in capsys.readouterr().err
  assert main.main(["inspect", "ckpt", "--gin.X=1"]) == 2  # gin flags only for gin binaries
  assert "unknown arguments" in capsys.readouterr().err


def _definitions(pattern: str) -> list[str]:
  """Files of the package whose source matches `pattern` (a regex)."""
  regex = re.compile(pattern, re.M)
  hits = []
  for module, path in _modules().items():
    if regex.search(open(path).read()):
      hits.append(os.path.relpath(path, REPO_ROOT))
  return sorted(hits)


@pytest.mark.parametrize("what,pattern,home", [
    ("shift_right", r"^def shift_right\(", ["prompt_tuning/models/t5.py"]),
    ("the prompt-parameter pattern", r"_prompt/\.\*", ["prompt_tuning/prompts/base.py"]),
    ("the prompt export folder", r"step_\{", ["prompt_tuning/layout.py"]),
    ("the checkpoints folder", r"\"checkpoints\"", ["prompt_tuning/layout.py"]),
    ("model sizes", r"emb_dim=\d|\(\d+, \d+, \d+, \d+, \d+\)", ["prompt_tuning/models/presets.py"]),
    ("checkpoint -> config", r"^def config_(for|from_shapes|from_hf)\(",
     ["prompt_tuning/readers/__init__.py", "prompt_tuning/readers/config.py",
      "prompt_tuning/readers/hf.py"]),
])
def test_each_fact_is_stated_once(what, pattern, home):
  assert _definitions(pattern) == sorted(home), what


def test_every_prompt_module_declares_its_positions():
  import jax.numpy as jnp
  from prompt_tuning import registry
  from prompt_tuning.cli import gin as gin_utils
  gin_utils.register_configurables()
  import flax.linen as nn
  from prompt_tuning.models.t5 import T5
  # Every registered module but the models themselves (T5 and its wrappers,
  # ModelSpec.model_class) is a prompt module.
  modules = [obj for obj, _, _ in registry.CONFIGURABLES
             if isinstance(obj, type) and issubclass(obj, nn.Module) and not issubclass(obj, T5)]
  assert len(modules) >= 6, modules
  for cls in modules:
    assert hasattr(cls, "num_positions"), f"{cls.__name__} has no num_positions"
  del jnp
