"""Decoding for the T5 model: greedy, sampling, beam search; and target scoring.

The search algorithms are model-agnostic: they call
`tokens_to_logits(state) -> (logits [B, V], new_cache)` where `state` is a
`DecodeState` (the step index, the token just emitted, every token so far
and the cache). `generate` wires them to a T5 with a KV cache (the default)
or without one (the whole prefix is re-run each step; slower, but it works
with a decoder-side prompt and serves as the reference in tests).

Shape key: B batch, K beams, L decode length, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models.t5 import shift_right

Array = jax.Array
NEG_INF = -1.0e7


@flax.struct.dataclass
class DecodeState:
  """What `tokens_to_logits` sees at step `index` (0-based)."""
  index: Array       # scalar int32: the position whose next token is predicted
  cur_token: Array   # [B] the token fed at `index` (0, the start token, at step 0)
  sequences: Array   # [B, L] the decoder inputs so far (start token, then outputs)
  cache: Any


TokensToLogits = Callable[[DecodeState], tuple[Array, Any]]


def _filter_logits(logits_BV: Array, top_k: int, top_p: float) -> Array:
  if top_k > 0:
    kth = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth, NEG_INF, logits_BV)
  if 0.0 < top_p < 1.0:
    sorted_desc = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always the first).
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff_index = jnp.sum(before < top_p, axis=-1, keepdims=True) - 1
    cutoff = jnp.take_along_axis(sorted_desc, cutoff_index, axis=-1)
    logits_BV = jnp.where(logits_BV < cutoff, NEG_INF, logits_BV)
  return logits_BV


def temperature_sample(tokens_to_logits: TokensToLogits, cache: Any, batch_size: int,
                       max_decode_len: int, rng: Optional[Array] = None, eos_id: int = 1,
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 0.0
                       ) -> tuple[Array, Array]:
  """Greedy (temperature 0) or sampled decoding.

  Returns:
    sequences [B, L] (0 after EOS) and their log-probabilities [B] under the
    model's unfiltered, untempered distribution.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if temperature > 0 and rng is None:
    raise ValueError("Sampling (temperature > 0) needs an rng")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  b, length = batch_size, max_decode_len

  def cond(c):
    return (c["i"] < length) & ~jnp.all(c["ended"])

  def body(c):
    i = c["i"]
    cur = jax.lax.dynamic_index_in_dim(c["inputs"], i, axis=1, keepdims=False)
    state = DecodeState(index=i, cur_token=cur, sequences=c["inputs"], cache=c["cache"])
    logits, cache = tokens_to_logits(state)
    logits = logits.astype(jnp.float32)
    if temperature == 0:
      rng = c["rng"]
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      rng, step_rng = jax.random.split(c["rng"])
      filtered = _filter_logits(logits / temperature, top_k, top_p)
      token = jax.random.categorical(step_rng, filtered, axis=-1).astype(jnp.int32)
    token = jnp.where(c["ended"], 0, token)
    # log p(token) = logit - logsumexp, without a [B, V] log-softmax array.
    token_logp = (jnp.take_along_axis(logits, token[:, None], -1)[:, 0]
                  - jax.nn.logsumexp(logits, axis=-1))
    # Decoder inputs are the outputs shifted right by one (position 0: start).
    inputs = jax.lax.dynamic_update_slice(c["inputs"], token[:, None],
                                          (0, jnp.minimum(i + 1, length - 1)))
    return dict(i=i + 1, inputs=inputs, cache=cache, rng=rng,
                outputs=jax.lax.dynamic_update_slice(c["outputs"], token[:, None], (0, i)),
                logp=c["logp"] + jnp.where(c["ended"], 0.0, token_logp),
                ended=c["ended"] | (token == eos_id))

  init = dict(i=jnp.array(0, jnp.int32), inputs=jnp.zeros((b, length), jnp.int32),
              outputs=jnp.zeros((b, length), jnp.int32), cache=cache, rng=rng,
              logp=jnp.zeros((b,), jnp.float32), ended=jnp.zeros((b,), bool))
  final = jax.lax.while_loop(cond, body, init)
  return final["outputs"], final["logp"]


def _length_penalty(length: Array, alpha: float) -> Array:
  """Wu et al. (2016): ((5 + length) / 6) ** alpha."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _flatten_beams(x: Array) -> Array:
  return x.reshape((-1,) + x.shape[2:])


def _unflatten_beams(x: Array, b: int) -> Array:
  return x.reshape((b, -1) + x.shape[1:])


def _gather_beams(tree: Any, beam_idx_BK: Array, b: int) -> Any:
  """Selects beams (per batch row) from every [B*K', ...] leaf; scalars pass."""
  def gather(x):
    if x.ndim == 0:
      return x
    x = _unflatten_beams(x, b)
    x = jnp.take_along_axis(x, beam_idx_BK.reshape(beam_idx_BK.shape + (1,) * (x.ndim - 2)),
                            axis=1)
    return _flatten_beams(x)
  return jax.tree.map(gather, tree)


def expand_to_beams(tree: Any, num_beams: int) -> Any:
  """[B, ...] -> [B*K, ...], each row repeated K times; scalars pass."""
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, num_beams, axis=0), tree)


def beam_search(tokens_to_logits: TokensToLogits, cache: Any, batch_size: int,
                max_decode_len: int, num_beams: int = 4, alpha: float = 0.6,
                eos_id: int = 1) -> tuple[Array, Array]:
  """Beam search with the length penalty ((5 + len) / 6) ** alpha.

  Args:
    cache: already expanded to B*K rows (see `expand_to_beams`).

  Returns:
    sequences [B, K, L] best first (0 after EOS) and their scores [B, K]
    (log-probability divided by the length penalty).
  """
  b, k, length = batch_size, num_beams, max_decode_len
  max_penalty = _length_penalty(jnp.array(length), alpha)

  init = dict(
      i=jnp.array(0, jnp.int32),
      alive_seq=jnp.zeros((b, k, length + 1), jnp.int32),  # position 0: start token
      alive_logp=jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1)),
      fin_seq=jnp.zeros((b, k, length + 1), jnp.int32),
      fin_score=jnp.full((b, k), NEG_INF, jnp.float32),
      fin_flag=jnp.zeros((b, k), bool),
      cache=cache,
  )

  def cond(s):
    best_alive = s["alive_logp"][:, 0] / max_penalty
    worst_fin = jnp.where(s["fin_flag"], s["fin_score"], NEG_INF).min(axis=1)
    done = jnp.all(s["fin_flag"], axis=1) & (best_alive < worst_fin)
    return (s["i"] < length) & ~jnp.all(done)

  def body(s):
    i = s["i"]
    flat_seq = _flatten_beams(s["alive_seq"][:, :, :length])
    cur = _flatten_beams(jax.lax.dynamic_slice_in_dim(s["alive_seq"], i, 1, axis=2))[:, 0]
    state = DecodeState(index=i, cur_token=cur, sequences=flat_seq, cache=s["cache"])
    logits, cache = tokens_to_logits(state)
    vocab = logits.shape[-1]
    logp_BKV = _unflatten_beams(jax.nn.log_softmax(logits.astype(jnp.float32), -1), b)
    cand_BKV = s["alive_logp"][:, :, None] + logp_BKV
    cand_logp, cand_idx = jax.lax.top_k(cand_BKV.reshape(b, k * vocab), 2 * k)
    cand_beam, cand_tok = cand_idx // vocab, (cand_idx % vocab).astype(jnp.int32)
    cand_seq = jnp.take_along_axis(s["alive_seq"], cand_beam[:, :, None], axis=1)
    cand_seq = jax.lax.dynamic_update_slice_in_dim(cand_seq, cand_tok[:, :, None], i + 1, axis=2)
    # An ending candidate finishes only if it ranks within the top K (so one
    # beam is exactly greedy); those grown from placeholder beams never do.
    in_top_k = jnp.arange(2 * k)[None, :] < k
    is_eos = (cand_tok == eos_id) & (cand_logp > NEG_INF / 2) & in_top_k

    # Alive: the best K candidates that do not end here.
    alive_logp, alive_pick = jax.lax.top_k(jnp.where(cand_tok == eos_id, NEG_INF, cand_logp), k)
    alive_seq = jnp.take_along_axis(cand_seq, alive_pick[:, :, None], axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(cand_beam, alive_pick, axis=1), b)

    # Finished: merge the candidates that just ended with those before.
    new_score = jnp.where(is_eos, cand_logp / _length_penalty(i + 1, alpha), NEG_INF)
    all_score = jnp.concatenate([s["fin_score"], new_score], axis=1)
    all_flag = jnp.concatenate([s["fin_flag"], is_eos], axis=1)
    all_seq = jnp.concatenate([s["fin_seq"], cand_seq], axis=1)
    fin_score, fin_pick = jax.lax.top_k(jnp.where(all_flag, all_score, NEG_INF), k)
    fin_flag = jnp.take_along_axis(all_flag, fin_pick, axis=1)
    fin_seq = jnp.take_along_axis(all_seq, fin_pick[:, :, None], axis=1)
    return dict(i=i + 1, alive_seq=alive_seq, alive_logp=alive_logp, fin_seq=fin_seq,
                fin_score=fin_score, fin_flag=fin_flag, cache=cache)

  s = jax.lax.while_loop(cond, body, init)
  # Rows with nothing finished return their alive beams.
  any_fin = jnp.any(s["fin_flag"], axis=1)
  seqs = jnp.where(any_fin[:, None, None], s["fin_seq"], s["alive_seq"])[:, :, 1:]
  scores = jnp.where(any_fin[:, None], s["fin_score"], s["alive_logp"] / max_penalty)
  return seqs, scores


# T5 wiring.


@registry.configurable
@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How `generate` searches; bindable from gin at the binaries."""
  method: str = "greedy"      # "greedy", "sample" or "beam"
  max_decode_length: int = 32
  num_beams: int = 4
  alpha: float = 0.6          # beam length penalty exponent
  temperature: float = 1.0    # sampling only
  top_k: int = 0              # sampling only; 0 keeps all
  top_p: float = 0.0          # sampling only; 0 (or 1) keeps all
  eos_id: int = 1
  use_cache: bool = True

  def __post_init__(self):
    if self.method not in ("greedy", "sample", "beam"):
      raise ValueError(f"DecodingConfig.method={self.method!r}; expected greedy, sample or beam")


def init_cache(model: nn.Module, params: Any, batch_size: int, max_decode_length: int,
               encoded_length: int = 1, prompt_features: Optional[dict] = None,
               per_row: bool = False) -> Any:
  """A zeroed KV cache for `batch_size` rows and `max_decode_length` steps,
  with room for the cross-attention keys and values of `encoded_length`
  encoder positions. `prompt_features` reach per-layer prompt modules that
  read them (HyperPrompt's task index); per-layer prefixes are not cached
  (the decoder joins them at every step), so they do not change the shapes.

  `per_row`: the decode position is [batch_size], one per row, instead of
  one scalar for the batch, so that one batched step advances rows that
  are at different positions (continuous batching, where rows start at
  different times)."""
  def make():
    encoded = jnp.ones((batch_size, encoded_length, model.config.emb_dim),
                       model.config.activation_dtype)
    mask = jnp.ones((batch_size, encoded_length), bool)
    dec = jnp.ones((batch_size, max_decode_length), jnp.int32)
    return model.apply({"params": params}, encoded, mask, dec, decode=True, cross_cache="fill",
                       prompt_features=prompt_features, mutable=["cache"],
                       method=model.decode)[1]["cache"]
  shapes = jax.eval_shape(make)

  def zeros(path, s):
    if per_row and getattr(path[-1], "key", None) == "decode_index":
      return jnp.zeros((batch_size, *s.shape), s.dtype)
    return jnp.zeros(s.shape, s.dtype)
  return jax.tree_util.tree_map_with_path(zeros, shapes)


def _is_cross(name: str) -> bool:
  return name.rsplit("/", 1)[-1].startswith("cross_")


def cross_cache_entries(model: nn.Module, params: Any, encoded: Array, encoder_mask: Array,
                        max_decode_length: int,
                        prompt_features: Optional[dict] = None) -> dict[str, Array]:
  """Projects the encoder output once into every layer's cross-attention
  cache: those entries (flat names), one row per example."""
  from prompt_tuning import trees as tree_lib
  cache = init_cache(model, params, encoded.shape[0], max_decode_length, encoded.shape[1],
                     prompt_features)
  start = jnp.zeros((encoded.shape[0], 1), jnp.int32)
  _, mutated = model.apply({"params": params, "cache": cache}, encoded, encoder_mask, start,
                           decode=True, cross_cache="fill", prompt_features=prompt_features,
                           mutable=["cache"], method=model.decode)
  return {n: v for n, v in tree_lib.flatten(mutated["cache"]).items() if _is_cross(n)}


def generate(model: nn.Module, params: Any, encoder_input_tokens: Array,
             config: DecodingConfig = DecodingConfig(), rng: Optional[Array] = None,
             prompt_features: Optional[dict[str, Array]] = None) -> tuple[Array, Array]:
  """Decodes outputs for a batch of encoder inputs.

  Returns:
    tokens [B, L] (for beam search: the best beam) and scores [B]
    (log-probability; for beam search, length-normalized).
  """
  b = encoder_input_tokens.shape[0]
  length = config.max_decode_length
  encoded, enc_mask = model.apply({"params": params}, encoder_input_tokens,
                                  prompt_features=prompt_features, method=model.encode)
  k = config.num_beams if config.method == "beam" else 1
  if config.use_cache:
    # The cross-attention keys and values are projected once per example, not
    # per beam: a beam's queries read their example's row (see
    # layers.MultiHeadAttention), so beam search projects and reads K times
    # less than a cache of B*K rows.
    cross = cross_cache_entries(model, params, encoded, enc_mask, length, prompt_features)
  if k > 1:
    encoded, enc_mask = expand_to_beams((encoded, enc_mask), k)
    prompt_features = expand_to_beams(prompt_features, k) if prompt_features else None

  if config.use_cache:
    from prompt_tuning import trees as tree_lib
    # The cross-attention keys and values never change while decoding: they
    # stay out of the loop state (no per-step copy, no beam reordering), and
    # only the self-attention cache is carried.
    cache = {n: v for n, v in tree_lib.flatten(init_cache(
        model, params, b * k, length, encoded.shape[1], prompt_features)).items()
             if not _is_cross(n)}

    def tokens_to_logits(state: DecodeState):
      logits, mutated = model.apply(
          {"params": params, "cache": tree_lib.unflatten({**state.cache, **cross})}, encoded,
          enc_mask, state.cur_token[:, None], decode=True, prompt_features=prompt_features,
          cross_cache="use", mutable=["cache"], method=model.decode)
      new = tree_lib.flatten(mutated["cache"])
      return logits[:, 0], {n: new[n] for n in state.cache}
  else:
    cache = None

    def tokens_to_logits(state: DecodeState):
      # Causal attention makes the positions after `index` irrelevant.
      logits = model.apply({"params": params}, encoded, enc_mask, state.sequences,
                           prompt_features=prompt_features, method=model.decode)
      return jax.lax.dynamic_index_in_dim(logits, state.index, axis=1, keepdims=False), None

  if config.method == "beam":
    seqs, scores = beam_search(tokens_to_logits, cache, b, length, k, config.alpha,
                               config.eos_id)
    return seqs[:, 0], scores[:, 0]
  temperature = 0.0 if config.method == "greedy" else config.temperature
  return temperature_sample(tokens_to_logits, cache, b, length, rng, config.eos_id,
                            temperature, config.top_k, config.top_p)


def score(model: nn.Module, params: Any, encoder_input_tokens: Array,
          decoder_target_tokens: Array, decoder_input_tokens: Optional[Array] = None,
          loss_weights: Optional[Array] = None,
          prompt_features: Optional[dict[str, Array]] = None) -> Array:
  """Sum of target-token log-probabilities per example [B] (rank classification).

  `decoder_input_tokens` defaults to the targets shifted right; positions
  with weight 0 (by default the padding, target 0) are not counted.
  """
  if decoder_input_tokens is None:
    decoder_input_tokens = shift_right(decoder_target_tokens)
  if loss_weights is None:
    loss_weights = (decoder_target_tokens > 0).astype(jnp.float32)
  logits = model.apply({"params": params}, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, prompt_features=prompt_features)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_logp = jnp.take_along_axis(log_probs, decoder_target_tokens[..., None], -1)[..., 0]
  return jnp.sum(token_logp * loss_weights, axis=-1)


def score_candidates(model: nn.Module, params: Any, encoder_input_tokens: Array,
                     candidates: Array, prompt_features: Optional[dict[str, Array]] = None
                     ) -> Array:
  """Scores C candidate targets per example: [B, C] sums of token log-probabilities.

  The input is encoded once, and each decoder layer projects the encoder
  output into cross-attention keys and values once; the C candidates then
  share that projection (read from one cache row per example, neither
  recomputed nor copied) and run through the decoder together as B * C
  rows. `score` on each candidate in turn would encode and project the
  input C times.

  Args:
    encoder_input_tokens: [B, L].
    candidates: [C, T] (the same candidates for every example) or [B, C, T];
      0 pads (padded positions do not count).
    prompt_features: per-example features [B, ...] for the prompt modules.
  """
  b = encoder_input_tokens.shape[0]
  if candidates.ndim == 2:
    candidates = jnp.broadcast_to(candidates[None], (b, *candidates.shape))
  if candidates.ndim != 3 or candidates.shape[0] != b:
    raise ValueError(f"candidates of shape {candidates.shape}; expected [C, T] or [B={b}, C, T]")
  c, t = candidates.shape[1:]
  from prompt_tuning import trees as tree_lib
  encoded, enc_mask = model.apply({"params": params}, encoder_input_tokens,
                                  prompt_features=prompt_features, method=model.encode)
  cross = cross_cache_entries(model, params, encoded, enc_mask, t, prompt_features)
  repeat = lambda x: jnp.repeat(x, c, axis=0)  # noqa: E731
  feats = jax.tree.map(repeat, prompt_features) if prompt_features else None
  # The cross-attention rows stay one per example (the candidates' queries
  # read their example's row); the self-attention part, zeros, has B * C rows.
  cache = tree_lib.flatten(init_cache(model, params, b * c, t, encoded.shape[1], feats))
  cache = tree_lib.unflatten({**{n: v for n, v in cache.items() if not _is_cross(n)}, **cross})
  targets = candidates.reshape(b * c, t)
  logits, _ = model.apply({"params": params, "cache": cache}, repeat(encoded), repeat(enc_mask),
                          shift_right(targets), targets, decode=True, cross_cache="use",
                          prompt_features=feats, mutable=["cache"], method=model.decode)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_logp = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  return jnp.sum(token_logp * (targets > 0), axis=-1).reshape(b, c)
