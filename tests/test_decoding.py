"""Decoding: search correctness on known distributions, caching, scoring, jit."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models.t5 import shift_right
from prompt_tuning import decoding
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from tests.conftest import TINY_CONFIG

EOS = 1


def _markov(table_VV):
  """A 'model' whose next-token logits depend only on the last token."""
  table = jnp.asarray(table_VV, jnp.float32)

  def tokens_to_logits(state):
    return table[state.cur_token], state.cache
  return tokens_to_logits


def _brute_force_finished(table, length, alpha):
  """All EOS-terminated sequences with their length-normalized scores."""
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table, jnp.float32), -1))
  vocab = table.shape[0]
  out = []
  for n in range(1, length + 1):
    for body in itertools.product([t for t in range(vocab) if t != EOS], repeat=n - 1):
      seq = list(body) + [EOS]
      prev, total = 0, 0.0
      for tok in seq:
        total += logp[prev, tok]
        prev = tok
      out.append((total / ((5.0 + n) / 6.0) ** alpha, seq + [0] * (length - n)))
  return sorted(out, key=lambda x: -x[0])


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_search_is_exhaustive(alpha):
  rng = np.random.RandomState(0)
  table = rng.normal(size=(4, 4)) * 2.0
  length = 3
  seqs, scores = decoding.beam_search(_markov(table), None, batch_size=1,
                                      max_decode_len=length, num_beams=48, alpha=alpha,
                                      eos_id=EOS)
  expected = _brute_force_finished(table, length, alpha)
  assert len(expected) == 1 + 3 + 9
  got_scores = np.asarray(scores[0, :len(expected)])
  np.testing.assert_allclose(got_scores, [e[0] for e in expected], rtol=1e-5, atol=1e-5)
  assert np.asarray(seqs[0, 0]).tolist() == expected[0][1]


def test_length_penalty_decides_between_short_and_long():
  # From the start: EOS at once (p=0.45), or token 2 (p=0.55) then token 3
  # (p=0.8) then EOS surely: log-probs -0.80 (length 1) vs -0.82 (length 3).
  table = np.log(np.array([[1e-9, 0.45, 0.55, 1e-9],
                           [1.0, 1e-9, 1e-9, 1e-9],
                           [1e-9, 0.2, 1e-9, 0.8],
                           [1e-9, 1.0, 1e-9, 1e-9]]))
  short, long = [EOS, 0, 0], [2, 3, EOS]
  seqs, _ = decoding.beam_search(_markov(table), None, 1, 3, num_beams=2, alpha=0.0)
  assert np.asarray(seqs[0, 0]).tolist() == short
  seqs, _ = decoding.beam_search(_markov(table), None, 1, 3, num_beams=2, alpha=1.0)
  assert np.asarray(seqs[0, 0]).tolist() == long


def test_greedy_follows_the_argmax_chain_and_stops_at_eos():
  table = np.full((5, 5), -5.0)
  table[0, 3] = table[3, 4] = table[4, 2] = table[2, EOS] = 0.0
  tokens, logp = decoding.temperature_sample(_markov(table), None, batch_size=2,
                                             max_decode_len=7, temperature=0.0)
  assert np.asarray(tokens).tolist() == [[3, 4, 2, EOS, 0, 0, 0]] * 2
  lsm = np.asarray(jax.nn.log_softmax(jnp.asarray(table, jnp.float32), -1))
  want = lsm[0, 3] + lsm[3, 4] + lsm[4, 2] + lsm[2, EOS]
  np.testing.assert_allclose(logp, [want, want], rtol=1e-5)


def _one_step_samples(logits_V, n, **kwargs):
  table = np.tile(np.asarray(logits_V, np.float32), (len(logits_V), 1))
  tokens, _ = decoding.temperature_sample(_markov(table), None, batch_size=n, max_decode_len=1,
                                          rng=jax.random.PRNGKey(0), **kwargs)
  return np.asarray(tokens[:, 0])


def test_temperature_sampling_matches_the_distribution():
  probs = np.array([0.1, 0.2, 0.3, 0.4])
  samples = _one_step_samples(np.log(probs), 20000, temperature=1.0, eos_id=99)
  freq = np.bincount(samples, minlength=4) / len(samples)
  np.testing.assert_allclose(freq, probs, atol=0.02)
  hot = _one_step_samples(np.log(probs), 20000, temperature=0.5, eos_id=99)
  sharpened = probs ** 2 / np.sum(probs ** 2)
  np.testing.assert_allclose(np.bincount(hot, minlength=4) / len(hot), sharpened, atol=0.02)


def test_top_k_and_top_p_restrict_the_support():
  probs = np.array([0.05, 0.5, 0.3, 0.15])
  top2 = _one_step_samples(np.log(probs), 5000, temperature=1.0, top_k=2, eos_id=99)
  assert set(top2.tolist()) == {1, 2}
  np.testing.assert_allclose(np.mean(top2 == 1), 0.5 / 0.8, atol=0.03)
  p70 = _one_step_samples(np.log(probs), 5000, temperature=1.0, top_p=0.7, eos_id=99)
  assert set(p70.tolist()) == {1, 2}
  p90 = _one_step_samples(np.log(probs), 5000, temperature=1.0, top_p=0.9, eos_id=99)
  assert set(p90.tolist()) == {1, 2, 3}


def test_sampling_arguments_are_checked():
  with pytest.raises(ValueError, match="temperature"):
    decoding.temperature_sample(_markov(np.zeros((3, 3))), None, 1, 2, temperature=-1.0)
  with pytest.raises(ValueError, match="method"):
    decoding.DecodingConfig(method="viterbi")


@pytest.fixture(scope="module")
def tiny():
  model = T5(TINY_CONFIG)
  params = params_lib.init_params(model, jax.random.PRNGKey(0))
  # A random model repeats one token (26 here); make EOS a noisy copy of that
  # token's output column so that some rows end early and others never do.
  kernel = params["decoder"]["logits_dense"]["kernel"]
  noise = 0.5 * jax.random.normal(jax.random.PRNGKey(7), kernel[:, 26].shape)
  params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, EOS].set(kernel[:, 26] + noise)
  enc = jnp.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0], [3, 1, 0, 0, 0]])
  return model, params, enc


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_cached_equals_uncached(tiny, method):
  model, params, enc = tiny
  out = []
  for use_cache in (True, False):
    cfg = decoding.DecodingConfig(method=method, max_decode_length=12, use_cache=use_cache,
                                  num_beams=3, temperature=0.8, top_k=10)
    out.append(decoding.generate(model, params, enc, cfg, rng=jax.random.PRNGKey(5)))
  np.testing.assert_array_equal(out[0][0], out[1][0])
  np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-4, atol=1e-4)


def test_generated_rows_end_at_eos_and_score_matches_scoring(tiny):
  model, params, enc = tiny
  tokens, logp = decoding.generate(model, params, enc,
                                   decoding.DecodingConfig(max_decode_length=12))
  tokens = np.asarray(tokens)
  assert any(EOS in row for row in tokens), "test model should end some rows"
  assert not all(EOS in row for row in tokens), "and leave some running"
  for row in tokens:
    if EOS in row:
      assert not row[list(row).index(EOS) + 1:].any()
  # The greedy log-probability equals scoring the decoded tokens as targets.
  scored = decoding.score(model, params, enc, jnp.asarray(tokens))
  np.testing.assert_allclose(logp, scored, rtol=1e-4, atol=1e-4)


def test_one_beam_equals_greedy(tiny):
  model, params, enc = tiny
  greedy = decoding.generate(model, params, enc, decoding.DecodingConfig(max_decode_length=12))
  beam = decoding.generate(model, params, enc, decoding.DecodingConfig(
      method="beam", num_beams=1, alpha=0.0, max_decode_length=12))
  np.testing.assert_array_equal(greedy[0], beam[0])
  np.testing.assert_allclose(greedy[1], beam[1], rtol=1e-5)


def test_score_and_rank_classification(tiny):
  model, params, enc = tiny
  candidates = [jnp.array([[20, 21, 1]] * 3), jnp.array([[22, 1, 0]] * 3)]
  scores = jnp.stack([decoding.score(model, params, enc, c) for c in candidates], axis=1)
  logits = model.apply({"params": params}, enc, shift_right(candidates[1]),
                       candidates[1])
  lsm = jax.nn.log_softmax(logits, -1)
  manual = lsm[:, 0, 22] + lsm[:, 1, EOS]
  np.testing.assert_allclose(scores[:, 1], manual, rtol=1e-5)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_jit_and_eager_agree(tiny, method):
  model, params, enc = tiny
  cfg = decoding.DecodingConfig(method=method, max_decode_length=8, num_beams=2)
  eager = decoding.generate(model, params, enc, cfg, rng=jax.random.PRNGKey(1))
  jitted = jax.jit(lambda p, e, r: decoding.generate(model, p, e, cfg, rng=r))(
      params, enc, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(eager[0], jitted[0])
  np.testing.assert_allclose(eager[1], jitted[1], rtol=1e-4, atol=1e-4)
  tgt = jnp.array([[20, 21, 1]] * 3)
  np.testing.assert_allclose(
      decoding.score(model, params, enc, tgt),
      jax.jit(lambda p: decoding.score(model, p, enc, tgt))(params), rtol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_score_candidates_equals_scoring_each_candidate(scan):
  """One encoding shared by all candidates gives each candidate's own score,
  with a soft prompt in front and padded, per-example candidates."""
  from prompt_tuning.prompts import initializers, soft
  cfg = TINY_CONFIG.replace(scan_layers=scan)
  model = T5(cfg, encoder_prompt=soft.SoftPrompt(length=3, init=initializers.random_uniform(0.5)))
  params = params_lib.init_params(model, jax.random.PRNGKey(3))
  enc = jnp.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0], [3, 1, 0, 0, 0]])
  cands = jnp.array([[[20, 21, 1], [22, 1, 0], [7, 7, 1]],
                     [[30, 1, 0], [22, 23, 1], [1, 0, 0]],
                     [[20, 21, 1], [40, 41, 1], [9, 1, 0]]])
  each = jnp.stack([decoding.score(model, params, enc, cands[:, i]) for i in range(3)], axis=1)
  joint = jax.jit(lambda p, x, c: decoding.score_candidates(model, p, x, c))(params, enc, cands)
  np.testing.assert_allclose(joint, each, rtol=1e-5, atol=1e-5)
  shared = decoding.score_candidates(model, params, enc, cands[0])  # [C, T] for every row
  each = jnp.stack([decoding.score(model, params, enc, jnp.tile(cands[0, i], (3, 1)))
                    for i in range(3)], axis=1)
  np.testing.assert_allclose(shared, each, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="expected"):
    decoding.score_candidates(model, params, enc, cands[:2])


def _dot_inputs(jaxpr) -> list:
  """The shapes of every dot_general's left operand, nested jaxprs included."""
  shapes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      shapes.append(tuple(eqn.invars[0].aval.shape))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          shapes += _dot_inputs(inner)
  return shapes


@pytest.mark.parametrize("scan", [False, True])
def test_beams_and_candidates_project_the_encoder_once_per_example(tiny, scan):
  """Beam search and rank classification read one cross-attention cache row
  per example: the encoder output is projected at B rows, never at B * K,
  and the results equal decoding without a cache."""
  _, _, enc = tiny
  model = T5(TINY_CONFIG.replace(scan_layers=scan))
  params = params_lib.init_params(model, jax.random.PRNGKey(2))
  b, m = enc.shape
  emb, beams = TINY_CONFIG.emb_dim, 4

  def beam(use_cache):
    cfg = decoding.DecodingConfig(method="beam", num_beams=beams, max_decode_length=7,
                                  use_cache=use_cache)
    return lambda p, x: decoding.generate(model, p, x, cfg)

  cands = jnp.array([[20, 21, 1], [22, 1, 0], [7, 7, 1]])
  for fn, rows in ((beam(True), b * beams),
                   (lambda p, x: decoding.score_candidates(model, p, x, cands), b * 3)):
    encoder_rows = [s[0] for s in _dot_inputs(jax.make_jaxpr(fn)(params, enc).jaxpr)
                    if s[-2:] == (m, emb)]
    assert b in encoder_rows and rows not in encoder_rows, encoder_rows
  cached, uncached = beam(True)(params, enc), beam(False)(params, enc)
  np.testing.assert_array_equal(cached[0], uncached[0])
  np.testing.assert_allclose(cached[1], uncached[1], rtol=1e-4, atol=1e-4)


def test_grouped_cross_attention_equals_a_repeated_cache():
  """A cross-attention cache of R rows serving R * G query rows (G beams or
  candidates each) gives what the cache repeated to R * G rows gives, with a
  different mask for every query row."""
  from prompt_tuning.models import layers
  r, g, l, keys, n, d, h = 2, 3, 2, 5, 2, 4, 8
  attention = layers.MultiHeadAttention(num_heads=n, head_dim=d)
  x = jax.random.normal(jax.random.PRNGKey(0), (r * g, l, h))
  params = attention.init(jax.random.PRNGKey(1), x, jnp.ones((r * g, keys, h)), None)["params"]
  k, v = jax.random.normal(jax.random.PRNGKey(2), (2, r, n, keys, d))
  visible = jax.random.bernoulli(jax.random.PRNGKey(3), 0.6, (r * g, l, keys))
  bias = layers.mask_to_bias(visible.at[..., 0].set(True))

  def attend(k, v):
    cache = {"cross_key": k, "cross_value": v}
    return attention.apply({"params": params, "cache": cache}, x, None, bias,
                           cross_cache="use")
  grouped = attend(k, v)
  repeated = attend(jnp.repeat(k, g, axis=0), jnp.repeat(v, g, axis=0))
  np.testing.assert_allclose(grouped, repeated, rtol=1e-5, atol=1e-6)
  assert not np.allclose(grouped[0], grouped[1])  # the masks differ within a group
  with pytest.raises(ValueError, match="4 rows for 6 query rows; expected a divisor"):
    attend(jnp.repeat(k, 2, axis=0), jnp.repeat(v, 2, axis=0))


@pytest.mark.parametrize("scan", [False, True])
def test_rows_at_different_positions_step_as_each_row_alone(scan):
  """With a per-row decode position (`init_cache(per_row=True)`), one batched
  step advances rows that started at different steps, and each row's logits
  equal that row decoded alone; a row that restarts sees nothing its last
  occupant cached (continuous batching reuses rows so)."""
  from prompt_tuning import trees as tree_lib
  # Scanned layers with a position table per layer (umT5), or T5's unrolled and shared one.
  cfg = TINY_CONFIG.replace(scan_layers=scan, shared_relative_bias=not scan)
  model = T5(cfg)
  params = params_lib.init_params(model, jax.random.PRNGKey(4))
  enc = jnp.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0], [3, 1, 0, 0, 0]])
  b, length, steps = enc.shape[0], 8, 6
  starts = [0, 2, 5]  # the global step at which each row (re)starts at position 0
  feeds = jax.random.randint(jax.random.PRNGKey(5), (b, steps), 2, 50)
  encoded, mask = model.apply({"params": params}, enc, method=model.encode)

  def step(cache, cross, enc_rows, mask_rows, tokens):
    logits, mutated = model.apply(
        {"params": params, "cache": tree_lib.unflatten({**cache, **cross})}, enc_rows,
        mask_rows, tokens[:, None], decode=True, cross_cache="use", mutable=["cache"],
        method=model.decode)
    new = tree_lib.flatten(mutated["cache"])
    return logits[:, 0], {n: new[n] for n in cache}
  step = jax.jit(step)

  def split(cache):
    flat = tree_lib.flatten(cache)
    return ({n: v for n, v in flat.items() if not decoding._is_cross(n)},
            {n: v for n, v in flat.items() if decoding._is_cross(n)})

  cross = decoding.cross_cache_entries(model, params, encoded, mask, length)  # a row per example
  alone = []
  for i in range(b):
    cache, _ = split(decoding.init_cache(model, params, 1, length, enc.shape[1]))
    assert cache[[n for n in cache if n.endswith("decode_index")][0]].shape == ()
    row = {n: v[i:i + 1] for n, v in cross.items()}
    logits = []
    for t in range(steps - starts[i]):
      out, cache = step(cache, row, encoded[i:i + 1], mask[i:i + 1], feeds[i, t:t + 1])
      logits.append(out[0])
    alone.append(jnp.stack(logits))

  cache, _ = split(decoding.init_cache(model, params, b, length, enc.shape[1], per_row=True))
  (index_name,) = [n for n in cache if n.endswith("decode_index")]
  assert cache[index_name].shape == (b,)
  together = [[] for _ in range(b)]
  for g in range(steps):
    # A row not started yet decodes a stray token; at its start it goes back to 0.
    cache[index_name] = jnp.where(jnp.array(starts) == g, 0, cache[index_name])
    tokens = jnp.array([feeds[i, g - starts[i]] if g >= starts[i] else 60 for i in range(b)])
    out, cache = step(cache, cross, encoded, mask, tokens)
    for i in range(b):
      if g >= starts[i]:
        together[i].append(out[i])
  for i in range(b):
    np.testing.assert_allclose(jnp.stack(together[i]), alone[i], rtol=1e-5, atol=1e-5)
