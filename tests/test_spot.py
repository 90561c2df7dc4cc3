"""SPoT (Vu et al. 2022): the source-prompt library, retrieval by cosine, transfer.

Expected similarities are computed here by hand from the definitions
(cosine of average tokens; mean cosine over token pairs), not by the code
under test.
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from prompt_tuning.cli import main as main_lib
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts import spot
from tests.conftest import REPO_ROOT

H = 4


def _cos(u, v):
  return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _mean_rows(m):
  return [sum(col) / len(m) for col in zip(*m)]


def _hand_average(a, b):
  return _cos(_mean_rows(a.tolist()), _mean_rows(b.tolist()))


def _hand_per_token(a, b):
  pairs = [_cos(x, y) for x in a.tolist() for y in b.tolist()]
  return sum(pairs) / len(pairs)


@pytest.fixture
def library(tmp_path):
  """Three sources of one width; 'nli' is built to lie close to the probe."""
  rng = np.random.RandomState(0)
  probe = rng.normal(size=(3, H)).astype(np.float32)
  sources = {
      "nli": probe + 0.1 * rng.normal(size=(3, H)),          # nearly the probe
      "qa": -probe + 0.3 * rng.normal(size=(3, H)),          # opposite
      "sentiment": rng.normal(size=(3, H)),                  # unrelated
  }
  lib = tmp_path / "lib"
  for name, value in sources.items():
    spot.add_source(str(lib), name, f"task_{name}", np.asarray(value, np.float32))
  np.save(tmp_path / "probe.npy", probe)
  return str(lib), str(tmp_path / "probe.npy"), probe, {
      k: np.asarray(v, np.float32) for k, v in sources.items()}


@pytest.mark.parametrize("metric,hand", [("average", _hand_average),
                                         ("per_token", _hand_per_token)])
def test_ranking_matches_hand_computed_cosines(library, metric, hand):
  lib, probe_path, probe, sources = library
  ranked = spot.rank(lib, probe_path, metric)
  expected = sorted(((hand(probe, v), k) for k, v in sources.items()), reverse=True)
  assert [s.name for s, _ in ranked] == [k for _, k in expected]
  for (source, score), (want, name) in zip(ranked, expected):
    assert source.task == f"task_{name}"
    assert score == pytest.approx(want, abs=1e-6)
  assert ranked[0][0].name == "nli"


def test_probe_of_another_length_is_compared_but_another_width_is_refused(library, tmp_path):
  lib, _, probe, sources = library
  longer = np.concatenate([probe, probe[:1]])  # 4 positions instead of 3
  ranked = spot.rank(lib, longer, "average")
  assert ranked[0][1] == pytest.approx(_hand_average(longer, sources[ranked[0][0].name]),
                                       abs=1e-6)
  np.save(tmp_path / "wide.npy", np.zeros((3, H + 1), np.float32))
  with pytest.raises(ValueError, match=r"\(width 5\) but the library's prompts have width 4"):
    spot.rank(lib, str(tmp_path / "wide.npy"))
  np.save(tmp_path / "flat.npy", np.zeros((H,), np.float32))
  with pytest.raises(ValueError, match=r"Probe prompt .* has shape \(4,\).*expected a non-empty"):
    spot.rank(lib, str(tmp_path / "flat.npy"))


def test_empty_or_malformed_library_gives_one_clear_error(tmp_path, library):
  _, probe_path, _, _ = library
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="has no index.json"):
    spot.rank(str(empty), probe_path)
  (empty / "index.json").write_text(json.dumps({"format": spot.FORMAT, "sources": []}))
  with pytest.raises(ValueError, match="is empty: .* lists no source prompts"):
    spot.rank(str(empty), probe_path)
  (empty / "index.json").write_text("{not json")
  with pytest.raises(ValueError, match="is not valid JSON"):
    spot.rank(str(empty), probe_path)
  (empty / "index.json").write_text(json.dumps({"format": spot.FORMAT,
                                                "sources": [{"name": "a"}]}))
  with pytest.raises(ValueError,
                     match=r"source 0 lacks the string field\(s\) \['task', 'prompt'\]"):
    spot.rank(str(empty), probe_path)
  (empty / "index.json").write_text(json.dumps({"format": spot.FORMAT, "sources": [
      {"name": "a", "task": "t", "prompt": "gone.npy"}]}))
  with pytest.raises(FileNotFoundError, match="gone.npy, which does not exist"):
    spot.rank(str(empty), probe_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    spot.rank(str(tmp_path / "nowhere"), probe_path)


def test_initializer_takes_the_best_source_or_the_weighted_mix(library):
  lib, probe_path, probe, sources = library
  best = initializers.spot(lib, probe_path)(jax.random.PRNGKey(0), (3, H))
  np.testing.assert_array_equal(np.asarray(best), sources["nli"])
  # Top 2 by hand: weights proportional to the (positive) similarities.
  sims = sorted(((_hand_average(probe, v), k) for k, v in sources.items()), reverse=True)[:2]
  weights = [max(s, 0.0) for s, _ in sims]
  want = sum(w / sum(weights) * sources[k] for w, (_, k) in zip(weights, sims))
  mixed = initializers.spot(lib, probe_path, top_k=2)(jax.random.PRNGKey(0), (3, H))
  np.testing.assert_allclose(np.asarray(mixed), want, atol=1e-6)
  with pytest.raises(ValueError, match=r"has shape \(3, 4\) but the prompt parameter has shape "
                                       r"\(5, 4\)"):
    initializers.spot(lib, probe_path)(jax.random.PRNGKey(0), (5, H))
  with pytest.raises(ValueError, match="top_k=0 must be at least 1"):
    initializers.spot(lib, probe_path, top_k=0)


def test_a_source_of_another_width_is_one_line_naming_it(library):
  """Issue 35's bad input: a source prompt whose width is not the library's (a file
  replaced behind the index) or not the model's; each refused in one line."""
  lib, probe_path, _, _ = library
  with pytest.raises(ValueError, match=r"has shape \(3, 4\) but the prompt parameter has shape "
                                       r"\(3, 6\) \(\[prompt length, model width\]\)"):
    initializers.spot(lib, probe_path)(jax.random.PRNGKey(0), (3, H + 2))
  np.save(os.path.join(lib, "qa.npy"), np.zeros((3, H + 1), np.float32))
  with pytest.raises(ValueError) as e:
    spot.rank(lib, probe_path)
  assert "\n" not in str(e.value)
  assert str(e.value).startswith("The library's prompts have different widths (nli (3, 4), "
                                 "qa (3, 5), sentiment (3, 4)); a library holds prompts of one")


def test_spot_rank_cli_prints_the_ranking(library, capsys):
  lib, probe_path, probe, sources = library
  assert main_lib.main(["spot", "rank", "--library", lib, "--probe", probe_path]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].split() == ["rank", "cosine", "source", "task"]
  expected = sorted(((_hand_average(probe, v), k) for k, v in sources.items()), reverse=True)
  for n, (line, (score, name)) in enumerate(zip(lines[1:], expected), 1):
    fields = line.split()
    assert fields[0] == str(n) and fields[2] == name and fields[3] == f"task_{name}"
    assert float(fields[1]) == pytest.approx(score, abs=1e-4)
  assert len(lines) == 1 + len(sources)
  # Bad inputs: one error line each, exit status 2.
  assert main_lib.main(["spot", "rank", "--library", lib]) == 2
  assert "spot rank needs --probe" in capsys.readouterr().err
  assert main_lib.main(["spot", "rank", "--library", lib + "_missing",
                        "--probe", probe_path]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "does not exist" in err[0]


def test_spot_add_cli_builds_a_library(tmp_path, capsys):
  np.save(tmp_path / "p.npy", np.ones((2, H), np.float32))
  lib = str(tmp_path / "lib")
  argv = ["spot", "add", "--library", lib, "--name", "rte", "--task", "glue_rte_v002",
          "--prompt", str(tmp_path / "p.npy")]
  assert main_lib.main(argv) == 0
  index = json.load(open(os.path.join(lib, "index.json")))
  assert index["sources"] == [{"name": "rte", "task": "glue_rte_v002", "prompt": "rte.npy"}]
  np.testing.assert_array_equal(np.load(os.path.join(lib, "rte.npy")), np.ones((2, H)))
  assert main_lib.main(argv) == 2
  assert "already in" in capsys.readouterr().err
  np.save(tmp_path / "w.npy", np.ones((2, H + 2), np.float32))
  assert main_lib.main(argv[:6] + ["--task", "x", "--prompt", str(tmp_path / "w.npy"),
                                   "--name", "w"]) == 2
  assert "width 6; the library" in capsys.readouterr().err


def test_spot_help_is_fast_and_imports_no_jax():
  probe = ("import sys\nfrom prompt_tuning.cli import main\n"
           "try:\n  main.main(['spot', '--help'])\nexcept SystemExit:\n  pass\n"
           "print('HEAVY=' + ','.join(m for m in ('jax', 'tensorflow', 'flax', 'seqio') "
           "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert "--library" in out and "--probe" in out
  assert "HEAVY=\n" in out or out.rstrip().endswith("HEAVY=")


def test_spot_gin_file_starts_training_from_the_best_source(tmp_path):
  """prompts/spot.gin through the train binary; at learning rate 0 the prompt stays put.

  (Adafactor still moves it by ~1e-5 at learning rate 0.)
  """
  from prompt_tuning import layout
  from tests import test_binaries
  from tests.conftest import fixture_path
  fixture_path("t5_spm.model")
  (tmp_path / "tiny_model.gin").write_text(test_binaries.TINY_MODEL_GIN)  # P = 4, H = 4
  rng = np.random.RandomState(1)
  probe = rng.normal(size=(4, 4)).astype(np.float32)
  near, far = probe + 0.05 * rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
  lib = str(tmp_path / "lib")
  spot.add_source(lib, "far", "task_far", np.asarray(far, np.float32))
  spot.add_source(lib, "near", "task_near", np.asarray(near, np.float32))
  np.save(tmp_path / "probe.npy", probe)
  run = str(tmp_path / "run")
  assert test_binaries._run(
      "train", run, "--gin_file=prompts/spot.gin", f"--gin.SPOT_LIBRARY='{lib}'",
      f"--gin.SPOT_PROBE='{tmp_path / 'probe.npy'}'", "--gin.TRAIN_STEPS=1",
      "--gin.prompt_tuning_adafactor.learning_rate=0.0") == 0
  np.testing.assert_allclose(np.load(layout.prompt_file(run, 1)), near.astype(np.float32),
                             atol=1e-4)
