"""Prompt recycling: methods on known maps, errors, caching, the CLI, the harness."""

import json
import os

import jax
import numpy as np
import pytest

from prompt_tuning.cli import main as main_lib
from prompt_tuning.recycling import harness, methods
from prompt_tuning.readers import t5x
from tests.conftest import files_digest, fixture_path


def _tables(n=600, hs=32, ht=48, seed=0):
  rng = np.random.RandomState(seed)
  source = rng.normal(size=(n, hs)).astype(np.float32)
  w = rng.normal(size=(hs, ht)).astype(np.float32) / np.sqrt(hs)
  return source, source @ w, w


def test_linear_map_is_recovered():
  source, target, w = _tables()
  recycler = methods.fit_linear(source, target)
  np.testing.assert_allclose(recycler(np.eye(32, dtype=np.float32)), w, atol=1e-4)
  prompt = np.random.RandomState(1).normal(size=(100, 32)).astype(np.float32)
  np.testing.assert_allclose(recycler(prompt), prompt @ w, atol=1e-4)


def test_linear_combination_reproduces_an_exact_map():
  source, target, w = _tables()
  prompt = np.random.RandomState(2).normal(size=(10, 32)).astype(np.float32)
  out = methods.fit_linear_combination(source, target)(prompt)
  np.testing.assert_allclose(out, prompt @ w, atol=1e-4)


def test_mlp_learns_the_map_approximately():
  source, target, w = _tables(n=800)
  prompt = np.random.RandomState(3).normal(size=(20, 32)).astype(np.float32)
  out = methods.fit_mlp(source, target, steps=1500)(prompt)
  rel = np.linalg.norm(out - prompt @ w) / np.linalg.norm(prompt @ w)
  assert rel < 0.2, rel


def test_mlp_stops_early_on_held_out_support_rows_instead_of_fitting_noise():
  # Target rows unrelated to the source rows: nothing to learn, so a good fit
  # predicts about the mean (error about the targets' variance, 1). Trained to
  # the end with no early stop (one evaluation, after the last step) the MLP
  # fits the noise of 400 rows and does worse on new rows.
  rng = np.random.RandomState(0)
  source, target = rng.randn(400, 16), rng.randn(400, 16)
  new, truth = rng.randn(200, 16), rng.randn(200, 16)
  stopped = np.mean((methods.fit_mlp(source, target)(new) - truth) ** 2)
  to_the_end = np.mean((methods.fit_mlp(source, target, eval_every=2000)(new) - truth) ** 2)
  assert stopped < 1.25 < to_the_end, (stopped, to_the_end)


def test_prompt_width_mismatch_is_a_clear_error():
  source, target, _ = _tables()
  with pytest.raises(ValueError, match=r"shape \(5, 33\) does not fit the source model: "
                                       r"expected \[prompt length, 32\]"):
    methods.fit_linear(source, target)(np.zeros((5, 33)))
  with pytest.raises(ValueError, match="Unknown recycling method 'affine'"):
    methods.fit("affine", source, target)


def test_support_id_outside_a_table_is_a_clear_error():
  tiny = fixture_path("t5x_tiny_checkpoint")
  with pytest.raises(ValueError, match=r"id\(s\) \[40000\] out of range"):
    methods.recycler_for(tiny, tiny, "linear", support=np.array([5, 40000]))


def test_fitted_recyclers_are_cached(monkeypatch):
  tiny, inline = fixture_path("t5x_tiny_checkpoint"), fixture_path("t5x_inline_checkpoint")
  methods._CACHE.clear()
  fits, reads = [], []
  real = methods.fit
  monkeypatch.setattr(methods, "fit", lambda *a, **k: fits.append(a[0]) or real(*a, **k))
  from prompt_tuning.prompts import initializers as init_lib
  real_load = init_lib.load_embeddings
  monkeypatch.setattr(init_lib, "load_embeddings",
                      lambda path: reads.append(path) or real_load(path))
  filter_file = fixture_path("english_vocab_filter.json")
  a = methods.recycler_for(tiny, inline, "linear", filter_file=filter_file)
  b = methods.recycler_for(tiny, inline, "linear", filter_file=filter_file)
  assert a is b and fits == ["linear"]
  for _ in range(3):  # many prompts, one fit, the two tables read once
    methods.recycle(np.ones((5, 4)), tiny, inline, "linear", filter_file=filter_file)
  assert fits == ["linear"]
  assert reads == [tiny, inline]


def test_cli_reads_only_embedding_tables(tmp_path, monkeypatch, capsys):
  tiny, inline = fixture_path("t5x_tiny_checkpoint"), fixture_path("t5x_inline_checkpoint")
  prompt = tmp_path / "p.npy"
  np.save(prompt, np.random.RandomState(0).normal(size=(5, 4)).astype(np.float32))
  methods._CACHE.clear()  # As in a fresh `prompt-tuning recycle` process.
  read = []
  real = t5x.T5XCheckpoint.read_many
  monkeypatch.setattr(t5x.T5XCheckpoint, "read_many",
                      lambda self, names: read.extend(names) or real(self, names))
  out = tmp_path / "q.npy"
  sources = {path: files_digest(str(path)) for path in (tiny, inline, prompt)}
  argv = ["recycle", f"--source_checkpoint={tiny}", f"--target_checkpoint={inline}",
          f"--prompt={prompt}", f"--out={out}", "--method=linear",
          f"--filter_file={fixture_path('english_vocab_filter.json')}"]
  assert main_lib.main(argv) == 0
  assert set(read) == {"token_embedder/embedding"}
  recycled = np.load(out)
  assert recycled.shape == (5, 8) and recycled.dtype == np.float32
  # Same as the library API with the paper's support (skip 1000, take 4000).
  np.testing.assert_allclose(recycled, methods.recycle(
      str(prompt), tiny, inline, "linear",
      filter_file=fixture_path("english_vocab_filter.json")), rtol=1e-6)
  # An existing output is never replaced silently.
  assert main_lib.main(argv) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err
  # The checkpoints and the source prompt are read, never written.
  assert {path: files_digest(str(path)) for path in sources} == sources


def test_harness_grid_and_report(tmp_path):
  """Mechanics of the harness on two random backbones (no pretraining)."""
  import orbax.checkpoint as ocp
  from prompt_tuning import backbones as backbones_lib
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  backbones = []
  for seed in (0, 1):
    path = str(tmp_path / f"b{seed}")
    params = params_lib.init_params(T5(backbones_lib.backbone_config("tiny")),
                                    jax.random.PRNGKey(seed))
    ocp.PyTreeCheckpointer().save(os.path.join(path, "checkpoint_0"),
                                  {"target": jax.device_get(params)})
    backbones.append(harness.Backbone(f"random{seed}", path, "tiny"))
  results = harness.run_grid(backbones, str(tmp_path / "work"), prompt_seeds=(0,),
                             prompt_steps=5, eval_examples=16)
  rows = results["rows"]
  assert len(rows) == 2 * 1 * 3  # 2 ordered pairs x 1 prompt x 3 methods
  for r in rows:
    assert r["best_baseline"] == max(results["baselines"][r["target"]].values())
    assert r["success"] == (r["recycled_exact_match"] > r["best_baseline"])
  assert set(results["baselines"]["random0"]) == {"no prompt", "random", "sampled vocab",
                                                  "class labels"}
  for m, rate in results["success_rate"].items():
    assert rate == np.mean([r["success"] for r in rows if r["method"] == m])
  json_path, md_path, png_path = harness.write_report(results, str(tmp_path / "report"))
  assert json.load(open(json_path))["rows"] == rows
  assert "| linear |" in open(md_path).read()
  assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def _save_backbone(path, params):
  import orbax.checkpoint as ocp
  ocp.PyTreeCheckpointer().save(os.path.join(path, "checkpoint_0"),
                                {"target": jax.device_get(params)})


def test_harness_counts_a_recycled_prompt_that_beats_the_best_baseline(tmp_path, monkeypatch):
  """A grid with wins and losses whose rates are known in advance.

  Backbones: `a`, `a_copy` (the same weights) and `b` (other weights). A prompt
  recycled between `a` and `a_copy` comes through the real linear maps unchanged; the
  stand-in task scores 100 for a prompt whose rows all match the target's good prompt
  and 0 otherwise, against baselines of at most 25. So a<->a_copy (2 of the 6 ordered
  pairs) succeed for both methods and every pair with `b` fails: 1/3 each.
  """
  from prompt_tuning import backbones as backbones_lib
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  cfg = backbones_lib.backbone_config("tiny")
  params_a = params_lib.init_params(T5(cfg), jax.random.PRNGKey(0))
  params_b = params_lib.init_params(T5(cfg), jax.random.PRNGKey(1))
  backbones = []
  for name, params in (("a", params_a), ("a_copy", params_a), ("b", params_b)):
    _save_backbone(str(tmp_path / name), params)
    backbones.append(harness.Backbone(name, str(tmp_path / name), "tiny"))
  rng = np.random.RandomState(0)
  good = {"a": rng.normal(size=(4, cfg.emb_dim)).astype(np.float32)}
  good["a_copy"] = good["a"]
  good["b"] = rng.normal(size=(4, cfg.emb_dim)).astype(np.float32)

  def fake_train(backbone, seed, length, steps, work_dir):
    path = os.path.join(work_dir, f"{backbone.name}.npy")
    np.save(path, good[backbone.name])
    return path

  def fake_em(backbone, prompt, examples):
    value = np.asarray(prompt.init(None, (4, cfg.emb_dim)))
    target = good[backbone.name]
    cos = (value * target).sum(-1) / (np.linalg.norm(value, axis=-1)
                                      * np.linalg.norm(target, axis=-1))
    return 100.0 if np.all(cos > 0.999) else 0.0

  monkeypatch.setattr(harness, "train_prompt", fake_train)
  monkeypatch.setattr(harness, "_em", fake_em)
  monkeypatch.setattr(harness, "baselines", lambda backbone, length, examples: {
      "no prompt": 0.0, "random": 12.5, "sampled vocab": 25.0, "class labels": 25.0})
  methods._CACHE.clear()
  results = harness.run_grid(backbones, str(tmp_path / "work"), prompt_seeds=(0,),
                             methods=("linear", "linear_combination"), prompt_length=4)
  wins = sorted((r["source"], r["target"], r["method"]) for r in results["rows"]
                if r["success"])
  assert wins == [("a", "a_copy", "linear"), ("a", "a_copy", "linear_combination"),
                  ("a_copy", "a", "linear"), ("a_copy", "a", "linear_combination")]
  for r in results["rows"]:
    assert r["best_baseline"] == 25.0
    assert r["recycled_exact_match"] == (100.0 if (r["source"], r["target"], r["method"])
                                         in wins else 0.0)
  assert results["success_rate"] == {"linear": pytest.approx(1 / 3),
                                     "linear_combination": pytest.approx(1 / 3)}


def test_small_support_falls_back_to_least_squares():
  # 20 support rows for a width of 32: W is not determined, so the linear fit
  # takes the minimum-norm solution S+ T; both methods reproduce the support
  # pairs and, being the same map p S+ T, agree everywhere.
  source, target, _ = _tables(n=20)
  linear = methods.fit_linear(source, target)
  comb = methods.fit_linear_combination(source, target)
  np.testing.assert_allclose(linear(source), target, atol=1e-3)
  np.testing.assert_allclose(comb(source), target, atol=1e-3)
  off_support = np.random.RandomState(4).normal(size=(3, 32)).astype(np.float32)
  assert np.all(np.isfinite(linear(off_support)))
  np.testing.assert_allclose(linear(off_support), comb(off_support), atol=1e-3)
