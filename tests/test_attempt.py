"""ATTEMPT as published (Asai et al. 2022; issue 15 point 1), checked against an
independent numpy computation with weights drawn here and passed in."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.prompts import attempt

H, P, R = 16, 3, 5
RNG = np.random.RandomState(42)


def write_sources(tmp_path, count, p=P, h=H, seed=0):
  """`count` random [p, h] source prompts as .npy files; their paths."""
  rng = np.random.RandomState(seed)
  files = []
  for i in range(count):
    files.append(str(tmp_path / f"source_{i}.npy"))
    np.save(files[-1], rng.randn(p, h).astype(np.float32))
  return files


def _inputs():
  """Embedded inputs [2, 6, H] whose padded positions hold huge values."""
  tokens = np.asarray([[5, 6, 7, 1, 0, 0], [8, 1, 0, 0, 0, 0]], np.int32)
  mask = tokens > 0
  emb = RNG.randn(2, 6, H).astype(np.float32)
  emb[~mask] = 1e3  # pooled over padding, these would win every maximum
  return jnp.asarray(emb), jnp.asarray(tokens), jnp.asarray(mask)


def _weights(num_tasks=0, bottleneck=R):
  target = RNG.randn(*((num_tasks,) if num_tasks else ()), P, H).astype(np.float32)
  return {"target": target,
          "down": {"kernel": RNG.randn(H, bottleneck).astype(np.float32) * 0.5},
          "up": {"kernel": RNG.randn(bottleneck, H).astype(np.float32) * 0.5},
          "layer_norm": {"scale": (1 + 0.3 * RNG.randn(H)).astype(np.float32),
                         "bias": (0.3 * RNG.randn(H)).astype(np.float32)}}


def _numpy_attempt(emb, mask, sources, w, targets, temperature):
  """The paper's equations in plain numpy, one example at a time."""
  out = []
  for b in range(emb.shape[0]):
    x = emb[b][mask[b]].max(axis=0)                      # max-pool over real tokens [H]
    down = x @ w["down"]["kernel"]
    up = (down / (1 + np.exp(-down))) @ w["up"]["kernel"]  # SiLU(z) = z * sigmoid(z)
    mu, var = up.mean(), up.var()
    h = (up - mu) / np.sqrt(var + 1e-6) * w["layer_norm"]["scale"] + w["layer_norm"]["bias"]
    candidates = np.concatenate([sources, targets[b][None]])   # [S+1, P, H]
    scores = candidates.max(axis=1) @ h / temperature          # max-pooled prompts
    a = np.exp(scores - scores.max())
    a /= a.sum()
    out.append(targets[b] + np.einsum("c,cph->ph", a, candidates))
  return np.stack(out)


def _apply(module, w, emb, tokens, mask, **features):
  params = jax.tree.map(jnp.asarray, w)
  return module.apply({"params": params}, emb, tokens, mask, **features)


@pytest.mark.parametrize("jit", [False, True])
def test_attempt_equals_a_numpy_computation_with_the_papers_temperature(tmp_path, jit):
  files = write_sources(tmp_path, 3)
  sources = np.stack([np.load(f) for f in files])
  module = attempt.AttemptPrompt(source_files=tuple(files), bottleneck=R,
                                 init=nn.initializers.zeros)
  w = _weights()
  emb, tokens, mask = _inputs()
  run = jax.jit(lambda e: _apply(module, w, e, tokens, mask)) if jit else (
      lambda e: _apply(module, w, e, tokens, mask))
  x, out_mask = run(emb)
  targets = np.broadcast_to(w["target"], (2, P, H))
  d_times_e = H * np.exp(1.0)
  expected = _numpy_attempt(np.asarray(emb), np.asarray(mask), sources, w, targets, d_times_e)
  np.testing.assert_allclose(x[:, :P], expected, rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(x[:, P:], emb)
  np.testing.assert_array_equal(out_mask[:, :P], True)
  # The temperature matters at this scale: T = 1 gives another prompt, and
  # binding it gives exactly the numpy result for T = 1.
  at_one = _numpy_attempt(np.asarray(emb), np.asarray(mask), sources, w, targets, 1.0)
  assert np.abs(at_one - expected).max() > 1e-2
  x1, _ = _apply(module.clone(temperature=1.0), w, emb, tokens, mask)
  np.testing.assert_allclose(x1[:, :P], at_one, rtol=2e-5, atol=2e-5)
  assert attempt.paper_temperature(768) == pytest.approx(2087.6, abs=0.1)  # released configs


def test_attempt_defaults_are_the_papers(tmp_path):
  """Bottleneck 100; parameters are the target, W_down, W_up and LN only (no biases in the
  projections, sources are not parameters); the target starts as sampled vocabulary."""
  files = write_sources(tmp_path, 2)
  table = np.random.RandomState(1).randn(400, H).astype(np.float32)
  module = attempt.AttemptPrompt(source_files=tuple(files), embeddings=table, first_n=300)
  assert module.temperature is None and module.bottleneck == 100
  emb, tokens, mask = _inputs()
  targets = []
  for seed in (0, 1):
    variables = nn.meta.unbox(nn.Module.init(module, jax.random.PRNGKey(seed), emb, tokens,
                                             mask))
    params = variables["params"]
    shapes = jax.tree.map(np.shape, params)
    assert shapes == {"target": (P, H), "down": {"kernel": (H, 100)},
                      "up": {"kernel": (100, H)},
                      "layer_norm": {"scale": (H,), "bias": (H,)}}
    target = np.asarray(params["target"])
    rows = [np.flatnonzero((table == row).all(axis=1)) for row in target]
    assert all(len(r) == 1 and r[0] < 300 for r in rows), "target is not sampled vocabulary"
    targets.append(target)
  assert not np.array_equal(*targets)  # the run's seed decides the tokens
  # Without a table (none given, no init context from the setup): one clear error.
  with pytest.raises(ValueError, match="sampled_vocab starts from the backbone's embedding "
                                       "table"):
    nn.Module.init(attempt.AttemptPrompt(source_files=tuple(files)), jax.random.PRNGKey(0),
                   emb, tokens, mask)


def test_attempt_multi_task_shares_attention_and_keeps_a_target_per_task(tmp_path):
  files = write_sources(tmp_path, 2)
  sources = np.stack([np.load(f) for f in files])
  module = attempt.AttemptPrompt(source_files=tuple(files), bottleneck=R, num_tasks=3,
                                 init=nn.initializers.zeros)
  emb, tokens, mask = _inputs()
  variables = nn.meta.unbox(nn.Module.init(module, jax.random.PRNGKey(0), emb, tokens, mask,
                                           task_index=jnp.asarray([0, 0])))
  shapes = jax.tree.map(np.shape, variables["params"])
  assert shapes["target"] == (3, P, H) and shapes["down"] == {"kernel": (H, R)}
  w = _weights(num_tasks=3)
  index = np.asarray([2, 0])
  x, _ = _apply(module, w, emb, tokens, mask, task_index=jnp.asarray(index, jnp.int32))
  expected = _numpy_attempt(np.asarray(emb), np.asarray(mask), sources, w, w["target"][index],
                            H * np.exp(1.0))
  np.testing.assert_allclose(x[:, :P], expected, rtol=2e-5, atol=2e-5)
  other, _ = _apply(module, w, emb, tokens, mask, task_index=jnp.asarray([1, 0], jnp.int32))
  assert not np.allclose(other[0, :P], x[0, :P]) and np.allclose(other[1], x[1])
  with pytest.raises(ValueError, match="needs the per-example feature 'task_index'"):
    _apply(module, w, emb, tokens, mask)


def test_attempt_sources_can_change_and_bad_sources_are_named(tmp_path):
  files = write_sources(tmp_path, 3)
  module = attempt.AttemptPrompt(source_files=tuple(files[:2]), init=nn.initializers.zeros)
  emb, tokens, mask = _inputs()
  params = nn.meta.unbox(nn.Module.init(module, jax.random.PRNGKey(0), emb, tokens,
                                        mask))["params"]
  # Adding or removing a source reuses the trained parameters as they are.
  for subset in (files, files[:1]):
    other = module.clone(source_files=tuple(subset))
    w, _, _ = other.apply({"params": params}, emb, mask, method=other.attention)
    assert w.shape == (2, len(subset) + 1)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  bad = str(tmp_path / "bad.npy")
  np.save(bad, np.zeros((4, H), np.float32))
  with pytest.raises(ValueError, match="all sources must share one"):
    nn.Module.init(module.clone(source_files=(files[0], bad)), jax.random.PRNGKey(0), emb,
                   tokens, mask)
  wide = str(tmp_path / "wide.npy")
  np.save(wide, np.zeros((3, H + 1), np.float32))
  with pytest.raises(ValueError, match="model width is 16"):
    nn.Module.init(module.clone(source_files=(wide,)), jax.random.PRNGKey(0), emb, tokens,
                   mask)


@pytest.mark.parametrize("jit", [False, True])
def test_attention_entropy_is_log_of_the_choices_when_uniform_and_zero_when_one_hot(jit):
  entropy = jax.jit(attempt.attention_entropy) if jit else attempt.attention_entropy
  for choices in (2, 5):
    uniform = np.full((3, choices), 1.0 / choices, np.float32)
    assert float(entropy(uniform)) == pytest.approx(np.log(choices), rel=1e-6)
    one_hot = np.eye(choices, dtype=np.float32)[[0, choices - 1, 1]]
    assert float(entropy(one_hot)) == 0.0  # 0 log 0 is 0, not nan
  # The batch mean: one uniform row over 4 and one one-hot row give half of log 4.
  mixed = np.asarray([[0.25] * 4, [0.0, 1.0, 0.0, 0.0]], np.float32)
  assert float(entropy(mixed)) == pytest.approx(np.log(4) / 2, rel=1e-6)
  # A skewed row lies strictly between, and equals the hand computation.
  skewed = np.asarray([[0.7, 0.2, 0.1]], np.float32)
  want = -np.sum(skewed * np.log(skewed))
  assert float(entropy(skewed)) == pytest.approx(want, rel=1e-6)
  assert 0 < want < np.log(3)


def test_temperatures_by_name_and_the_entropy_they_give(tmp_path):
  """The three temperatures of issue 35 by name; at d = 16 a larger T flattens the
  attention (higher entropy), and the module's default stays the paper's d * e."""
  assert attempt.temperature_of("d*e", 64) == pytest.approx(64 * np.e)
  assert attempt.temperature_of("d*e", 16) == attempt.paper_temperature(16)
  assert attempt.temperature_of("sqrt(d)", 64) == 8.0
  assert attempt.temperature_of("1", 64) == 1.0
  with pytest.raises(ValueError, match=r"Unknown ATTEMPT temperature 'd\*d'; expected one of "
                                       r"\('d\*e', 'sqrt\(d\)', '1'\)"):
    attempt.temperature_of("d*d", 64)
  files = write_sources(tmp_path, 3)
  module = attempt.AttemptPrompt(source_files=tuple(files), bottleneck=R,
                                 init=nn.initializers.zeros)
  assert module.temperature is None  # the file and gin format: a number, None the paper's
  w = jax.tree.map(jnp.asarray, _weights())
  emb, _, mask = _inputs()
  entropies = {}
  for name in attempt.TEMPERATURES:
    m = module.clone(temperature=attempt.temperature_of(name, H))
    weights, _, _ = m.apply({"params": w}, emb, mask, method=m.attention)
    entropies[name] = float(attempt.attention_entropy(weights))
  default, _, _ = module.apply({"params": w}, emb, mask, method=module.attention)
  assert float(attempt.attention_entropy(default)) == pytest.approx(entropies["d*e"], rel=1e-6)
  assert entropies["1"] < entropies["sqrt(d)"] < entropies["d*e"] <= np.log(4) + 1e-6
