"""Building blocks of T5 in Flax linen, named and initialized after T5X.

Shape key used in names: B batch, L query length, K key length, H model
(embedding) width, N attention heads, D head width, F MLP width, V vocabulary.

Every parameter carries logical axis names (`embed`, `joined_kv`, `mlp`,
`vocab`, `heads`, `relpos_buckets`); a rules table elsewhere maps them onto a
device mesh.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

# Masked attention logits get this added; large but finite so that a row with
# no visible key (a padded query) still has a well-defined softmax.
MASK_BIAS = -1e10

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def einsum(subscripts: str, a: Array, b: Array, dtype: Any) -> Array:
  """`jnp.einsum(subscripts, a, b)` of the operands cast to `dtype`, the
  activations' dtype.

  In float32 (or wider) it is exactly that. Below float32 (bfloat16, as T5X
  computes activations), the product takes `dtype` operands, sums in float32
  and rounds the result to `dtype` once; the backward pass's two products do
  the same, on the cotangent cast to `dtype` (`_narrow_einsum`). Gradients
  come back in each operand's own dtype (a float32 kernel gets a float32
  gradient).

  That is the form XLA:CPU sends to the AMX tiles of an Intel Xeon (through
  YNNPACK): on 2 Sapphire Rapids cores a bfloat16 2048^3 product ran at about
  1,340 GFLOP/s summing in float32 and about 210 with a bfloat16 result
  (jaxlib 0.10.2). The T5 1.1-small train step in bfloat16 takes 1.29 s there
  against 1.83 s in float32 (benchmarks/results/intel-xeon-avx512-amx/bf16_cpu.md);
  with bfloat16-result products it had been slower than float32. The
  weight products (`Dense`, `Embed.attend`) use it. The attention products do
  not: where YNNPACK declines a batched bfloat16 product summing in float32
  (a transposed operand, sides under 8), XLA:CPU's fallback has no kernel for
  it and the step fails at run time ("Unsupported element type for
  DotThunk::Execute: BF16 x BF16 = F32"), as a tiny model's attention did.

  Below float32, `subscripts` must name two operands whose gradients are
  products (`_einsum_terms`); anything else is a ValueError before tracing.
  """
  if not is_narrow(dtype):
    return jnp.einsum(subscripts, a.astype(dtype), b.astype(dtype))
  _einsum_terms(subscripts)
  return _narrow_einsum(subscripts, jnp.dtype(dtype), a, b)


def is_narrow(dtype: Any) -> bool:
  """Whether `dtype` is a floating type narrower than float32 (bfloat16, float16)."""
  dtype = jnp.dtype(dtype)
  return bool(jnp.issubdtype(dtype, jnp.floating)) and dtype.itemsize < 4


def _einsum_terms(subscripts: str) -> tuple[str, str, str]:
  inputs, out = subscripts.replace(" ", "").split("->")
  lhs, rhs = inputs.split(",")
  for name, term, others in (("first", lhs, rhs + out), ("second", rhs, lhs + out)):
    if "." in term or len(set(term)) != len(term) or not set(term) <= set(others):
      raise ValueError(
          f"einsum {subscripts!r}: the {name} operand's indices must be distinct letters that "
          "each appear in the other operand or the output (its gradient is a product of "
          "those two)")
  return lhs, rhs, out


def _accumulated(subscripts: str, a: Array, b: Array) -> Array:
  return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _narrow_einsum(subscripts: str, dtype: Any, a: Array, b: Array) -> Array:
  return _accumulated(subscripts, a.astype(dtype), b.astype(dtype)).astype(dtype)


def _narrow_einsum_fwd(subscripts, dtype, a, b):
  a_low, b_low = a.astype(dtype), b.astype(dtype)
  out = _accumulated(subscripts, a_low, b_low).astype(dtype)
  # Zero-size arrays carry the operands' own dtypes to the backward pass.
  return out, (a_low, b_low, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _narrow_einsum_bwd(subscripts, dtype, residuals, g):
  a_low, b_low, a_kind, b_kind = residuals
  lhs, rhs, out = _einsum_terms(subscripts)
  g = g.astype(dtype)
  da = _accumulated(f"{out},{rhs}->{lhs}", g, b_low).astype(a_kind.dtype)
  db = _accumulated(f"{lhs},{out}->{rhs}", a_low, g).astype(b_kind.dtype)
  return da, db


_narrow_einsum.defvjp(_narrow_einsum_fwd, _narrow_einsum_bwd)


def _param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
           axes: Sequence[str], dtype: Any) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


class Dense(nn.Module):
  """A bias-free projection of the last axis, kernel [in, out]."""
  features: int
  kernel_axes: tuple[str, str]
  kernel_init: Initializer = default_kernel_init
  dtype: Any = jnp.float32
  weight_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                    self.kernel_axes, self.weight_dtype)
    if not is_narrow(self.dtype):
      return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    x_MI = x.reshape((-1, x.shape[-1]))
    return einsum("mi,io->mo", x_MI, kernel, self.dtype).reshape(x.shape[:-1] + (self.features,))


class Embed(nn.Module):
  """Token embedding table [V, H], also usable as the tied output projection."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  weight_dtype: Any = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = _param(self, "embedding", self.embedding_init,
                            (self.num_embeddings, self.features), ("vocab", "embed"),
                            self.weight_dtype)

  def __call__(self, tokens_BL: Array) -> Array:
    return jnp.take(self.embedding, tokens_BL, axis=0).astype(self.dtype)

  def attend(self, x_BLH: Array) -> Array:
    """Logits against the embedding table: x @ embedding.T."""
    if not is_narrow(self.dtype):
      return jnp.dot(x_BLH.astype(self.dtype), self.embedding.astype(self.dtype).T)
    x_MH = x_BLH.reshape((-1, x_BLH.shape[-1]))
    logits = einsum("mh,vh->mv", x_MH, self.embedding, self.dtype)
    return logits.reshape(x_BLH.shape[:-1] + (self.num_embeddings,))


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, statistics in float32."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  weight_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",),
                   self.weight_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon)
    scale = scale.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
    return (y * scale).astype(self.dtype)


def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """Maps key-minus-query offsets to T5's bucket ids.

  Half of the buckets (per direction, when bidirectional) hold exact small
  offsets; the rest cover offsets up to `max_distance` on a log scale, and
  larger offsets share the last bucket.
  """
  n = -relative_position
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(n.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  n_f = jnp.maximum(n, 1).astype(jnp.float32)
  large = max_exact + (
      jnp.log(n_f / max_exact + np.finfo(np.float32).eps)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(n.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return ret + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """The bucketed relative-position table [N, buckets] and its lookup."""
  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool
  dtype: Any = jnp.float32
  weight_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query_positions_L: Array, key_positions_K: Array) -> Array:
    """Returns the bias [1, N, L, K] for the given absolute positions, or
    [B, N, L, K] for per-row query positions [B, L] (rows decoding at
    different positions)."""
    table_NB = _param(self, "rel_embedding",
                      nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                      (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"),
                      self.weight_dtype)
    query_BL = query_positions_L.reshape((-1, query_positions_L.shape[-1]))
    rel_BLK = key_positions_K[None, None, :] - query_BL[:, :, None]
    buckets_BLK = relative_position_bucket(rel_BLK.astype(jnp.int32), self.bidirectional,
                                           self.num_buckets, self.max_distance)
    bias_NBLK = jnp.take(table_NB.astype(self.dtype), buckets_BLK, axis=1)
    return jnp.moveaxis(bias_NBLK, 0, 1)


def mask_to_bias(mask_BLK: Array, dtype: Any = jnp.float32) -> Array:
  """Boolean [B, L, K] visibility -> additive bias [B, 1, L, K]."""
  return jnp.where(mask_BLK, 0.0, MASK_BIAS).astype(dtype)[:, None]


class Dropout(nn.Module):
  """Inverted dropout; `mask_bits=8` draws 8-bit masks, four per 32-bit random word.

  JAX's generators produce 32-bit words; taking one word per element (Flax's
  Dropout, `mask_bits=32`) makes dropout masks a large share of a CPU step.
  With 8 bits the keep probability is rounded to a multiple of 1/256
  (rate 0.1 keeps 230/256 = 0.8984) and the kept values are scaled by the
  inverse of that rounded probability, so the expectation is exact.
  """
  rate: float
  mask_bits: int = 8

  def keep_mask(self, shape: Sequence[int]) -> tuple[Array, float]:
    """Which entries of an array of `shape` are kept, and the probability the
    kept ones are divided by. Apart from the random stream it draws from,
    `mask_bits=32` is Flax's Dropout: one Bernoulli draw per element. A rate
    that keeps nothing gives an all-False mask (and 1, never a division by 0)."""
    if self.mask_bits not in (8, 32):
      raise ValueError(f"dropout mask_bits={self.mask_bits}; expected 8 or 32")
    threshold = int(round((1.0 - self.rate) * 256))  # 8-bit: keep a byte below it.
    keep_prob = 1.0 - self.rate if self.mask_bits == 32 else threshold / 256.0
    if keep_prob <= 0:
      return jnp.zeros(shape, bool), 1.0
    if self.mask_bits == 32:
      return jax.random.bernoulli(self.make_rng("dropout"), keep_prob, shape), keep_prob
    if threshold >= 256:
      return jnp.ones(shape, bool), 1.0
    n = math.prod(shape)
    words = jax.random.bits(self.make_rng("dropout"), ((n + 3) // 4,), jnp.uint32)
    bytes_ = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:n].reshape(shape)
    return bytes_ < threshold, keep_prob

  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    if deterministic or self.rate == 0:
      return x
    keep, keep_prob = self.keep_mask(x.shape)
    return jnp.where(keep, x / keep_prob, 0).astype(x.dtype)


# `MultiHeadAttention.example_loop` applies where one example's scores [N, L, K]
# have at least this many entries (1 MiB in float32; a decoding step's are far
# smaller, and looping over them would cost more than it saves).
EXAMPLE_LOOP_MIN_SCORES = 1 << 18


def attend_one_example_at_a_time(q_BLND: Array, k: Array, v: Array, biases: Sequence[Array],
                                 keep: Optional[tuple[Array, float]], head_major: bool,
                                 logits_dtype: Any, dtype: Any) -> Array:
  """softmax(q k^T + biases) v, as `MultiHeadAttention` computes it, in a loop
  over the batch; the backward pass recomputes each example's scores.

  On a CPU the batched form writes and rereads the [B, N, L, K] scores about
  nine times (the dot, the bias sum, the max, the exponent, the sum, the
  division, the second dot), each pass over a tensor larger than the cache
  (24 MiB for T5-small's 8 x 356 tokens). One example's scores (3 MiB) stay
  in cache across those passes: on a 2-core AVX2 EPYC one T5-small
  attention layer (projections included) ran 1.76x as fast forward and 1.32x
  forward plus backward (benchmarks/results/amd-epyc-avx2/attention_loop.md), and no
  [B, N, L, K] array is kept for the backward pass.

  k, v: [B, K, N, D], or [B, N, K, D] when `head_major`; each of `biases`
  broadcasts to [B, N, L, K]; `keep`: (kept mask [B, N, L, K], keep
  probability) of the dropout on the attention weights, or None.
  Returns [B, L, N, D].
  """
  keys = "nkd" if head_major else "knd"
  terms = [term.reshape((1,) * (4 - term.ndim) + term.shape) for term in biases]
  # Terms with a batch of 1 are closed over; the others are sliced per example.
  batched = [term.shape[0] != 1 for term in terms]
  shared_terms = [term[0] for term, sliced in zip(terms, batched) if not sliced]
  keep_mask, keep_prob = keep if keep is not None else (None, 1.0)

  def one_example(args):
    q_LND, k_1, v_1, sliced_terms, keep_NLK = args
    logits_NLK = jnp.einsum(f"lnd,{keys}->nlk", q_LND.astype(logits_dtype),
                            k_1.astype(logits_dtype))
    sliced, shared = iter(sliced_terms), iter(shared_terms)
    for is_sliced in batched:  # In the batched form's order, for the same sums.
      logits_NLK = logits_NLK + next(sliced if is_sliced else shared).astype(logits_dtype)
    weights = jax.nn.softmax(logits_NLK, axis=-1).astype(dtype)
    if keep_NLK is not None:
      weights = jnp.where(keep_NLK, weights / keep_prob, 0).astype(dtype)
    return jnp.einsum(f"nlk,{keys}->lnd", weights, v_1.astype(dtype))

  return jax.lax.map(jax.checkpoint(one_example, prevent_cse=False),
                     (q_BLND, k, v, tuple(t for t, sliced in zip(terms, batched) if sliced),
                      keep_mask))


def _share_cross_cache(k: Array, v: Array, rows: int, grouped: bool) -> tuple[Array, Array]:
  """The cross-attention cache [R, N, K, D] for `rows` query rows, each cache
  row serving `rows / R` consecutive query rows (`expand_to_beams` order).
  Kept at R rows when `grouped` (the attention groups the queries instead);
  otherwise repeated to `rows` (per-row prefixes need their own keys)."""
  if rows % k.shape[0]:
    raise ValueError(f"The cross-attention cache has {k.shape[0]} rows for {rows} query rows; "
                     "expected a divisor (one cache row per example, its beams or "
                     "candidates next to each other)")
  if grouped:
    return k, v
  groups = rows // k.shape[0]
  return jnp.repeat(k, groups, axis=0), jnp.repeat(v, groups, axis=0)


def _group_rows(term: Array, rows: int, length: int, groups: int) -> Array:
  """An attention bias broadcastable to [rows, N, length, K] as
  [rows / groups, N, groups * length, K], matching grouped queries."""
  term = term.reshape((1,) * (4 - term.ndim) + term.shape)
  term = jnp.broadcast_to(term, (rows, term.shape[1], length, term.shape[3]))
  term = jnp.swapaxes(term.reshape(rows // groups, groups, *term.shape[1:]), 1, 2)
  return term.reshape(rows // groups, term.shape[1], groups * length, term.shape[4])


def _write_cache(cache_BKND: Array, new_BLND: Array, decode_index: Array) -> Array:
  """Writes the L new positions into the self-attention cache at `decode_index`:
  a scalar (every row at one position) or [B] (each row at its own)."""
  if decode_index.ndim == 0:
    return jax.lax.dynamic_update_slice(cache_BKND, new_BLND, (0, decode_index, 0, 0))
  # Only the write is mapped over rows (a scatter of L positions per row);
  # the attention around it stays one batched computation.
  return jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice(c, x, (i, 0, 0)))(
      cache_BKND, new_BLND, decode_index)


class MultiHeadAttention(nn.Module):
  """T5 attention: no 1/sqrt(D) at run time (it lives in the query init).

  In decode mode the keys and values of the tokens seen so far live in the
  'cache' collection ([B, Lmax, N, D]); each call writes its T new positions
  at `decode_index` (a scalar, or [B]: one position per row) and attends over
  the whole cache.

  `example_loop`: compute the scores, softmax and weighted values one example
  at a time (see `attend_one_example_at_a_time`) when an example's scores
  have at least EXAMPLE_LOOP_MIN_SCORES entries. Same values, a different
  schedule: for CPUs.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dropout_mask_bits: int = 8
  example_loop: bool = False
  dtype: Any = jnp.float32
  weight_dtype: Any = jnp.float32
  float32_logits: bool = True

  @nn.compact
  def __call__(self, inputs_q_BLH: Array, inputs_kv_BKH: Array, bias: Any,
               deterministic: bool = True, decode: bool = False,
               decode_index: Optional[Array] = None, cross_cache: str = "none",
               prefix_kv: Optional[tuple[Array, Array]] = None,
               kv_scale: Optional[tuple[Array, Array]] = None) -> Array:
    """`cross_cache` (cross-attention while decoding): "fill" projects the
    encoder output and keeps its keys and values in the cache; "use" reads
    them instead of projecting again; "none" projects every call. A cache
    of R rows serves R * G query rows, G consecutive rows per cache row
    (beams, rank-classification candidates): their queries are attended
    together, so the cache is neither projected nor read per beam.

    `prefix_kv`: (keys, values) [B or 1, P, N, D] prepended to the keys and
    values, visible to every query and without position bias (deep prompts,
    prefix tuning, HyperPrompt). They are joined after the cache, so a
    cached decoding step sees them exactly as a full pass does.

    `kv_scale`: (key scale, value scale) [N * D] multiplying the projected
    keys and values before they are cached (IA3); prefixes are not scaled."""
    n, d = self.num_heads, self.head_dim
    depth_scaling = math.sqrt(d)

    def query_init(*args):
      return nn.initializers.variance_scaling(1.0, "fan_in", "normal")(*args) / depth_scaling

    proj = functools.partial(Dense, features=n * d, kernel_axes=("embed", "joined_kv"),
                             dtype=self.dtype, weight_dtype=self.weight_dtype)
    kv_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    b, l = inputs_q_BLH.shape[:2]
    q = proj(name="query", kernel_init=query_init)(inputs_q_BLH).reshape(b, l, n, d)
    # The cross-attention cache is head-major [B, N, K, D]: each decoding
    # step's one query then reads contiguous keys and values per head.
    head_major = cross_cache in ("fill", "use")
    if cross_cache == "use":
      k = self.get_variable("cache", "cross_key")
      v = self.get_variable("cache", "cross_value")
      if k.shape[0] != b:
        k, v = _share_cross_cache(k, v, b, prefix_kv is None)
    else:
      k = proj(name="key", kernel_init=kv_init)(inputs_kv_BKH).reshape(b, -1, n, d)
      v = proj(name="value", kernel_init=kv_init)(inputs_kv_BKH).reshape(b, -1, n, d)
      if kv_scale is not None:
        k = k * kv_scale[0].reshape(1, 1, n, d).astype(k.dtype)
        v = v * kv_scale[1].reshape(1, 1, n, d).astype(v.dtype)
    if cross_cache == "fill":
      k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
      self.put_variable("cache", "cross_key", k)
      self.put_variable("cache", "cross_value", v)
      decode = False  # Cross-attention has no causal cache of its own.

    if decode and cross_cache == "none":
      is_initialized = self.has_variable("cache", "cached_key")
      cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
      cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
      if is_initialized:
        cached_k.value = _write_cache(cached_k.value, k, decode_index)
        cached_v.value = _write_cache(cached_v.value, v, decode_index)
        k, v = cached_k.value, cached_v.value

    # `bias`: one additive array, or a tuple of them (mask and position terms),
    # each broadcastable to [B, N, L, K].
    biases = () if bias is None else (tuple(bias) if isinstance(bias, (tuple, list))
                                      else (bias,))
    if prefix_kv is not None:
      p = prefix_kv[0].shape[1]

      def joined(prefix_BPND, x):
        prefix_BPND = jnp.broadcast_to(prefix_BPND, (b, p, n, d)).astype(x.dtype)
        if head_major:
          return jnp.concatenate([prefix_BPND.transpose(0, 2, 1, 3), x], axis=2)
        return jnp.concatenate([prefix_BPND, x], axis=1)
      k, v = joined(prefix_kv[0], k), joined(prefix_kv[1], v)
      biases = tuple(jnp.pad(term, ((0, 0),) * (term.ndim - 1) + ((p, 0),))
                     for term in biases)

    # A cache of G times fewer rows than the queries (beams, candidates): row
    # r of the cache serves query rows r*G .. r*G+G-1, as G times the queries.
    groups = b // k.shape[0]
    if groups > 1:
      q = q.reshape(k.shape[0], groups * l, n, d)
      biases = tuple(_group_rows(term, b, l, groups) for term in biases)
    logits_dtype = jnp.float32 if self.float32_logits else self.dtype
    drop = None
    if not deterministic and self.dropout_rate > 0:
      drop = Dropout(self.dropout_rate, self.dropout_mask_bits)
    key_len = k.shape[2] if head_major else k.shape[1]
    if (self.example_loop and n * l * key_len >= EXAMPLE_LOOP_MIN_SCORES
        and k.shape[0] == v.shape[0] == b and groups == 1):
      keep = drop.keep_mask((b, n, l, key_len)) if drop is not None else None
      out = attend_one_example_at_a_time(q, k, v, biases, keep, head_major,
                                         logits_dtype, self.dtype)
    else:
      keys = "bnkd" if head_major else "bknd"
      logits_BNLK = jnp.einsum(f"blnd,{keys}->bnlk", q.astype(logits_dtype),
                               k.astype(logits_dtype))
      for term in biases:
        logits_BNLK = logits_BNLK + term.astype(logits_dtype)
      weights = jax.nn.softmax(logits_BNLK, axis=-1).astype(self.dtype)
      if drop is not None:
        weights = drop(weights, deterministic=False)
      out = jnp.einsum(f"bnlk,{keys}->blnd", weights, v.astype(self.dtype))
    out = out.reshape(b, l, n * d)  # Grouped queries return to their rows here.
    return Dense(inputs_q_BLH.shape[-1], ("joined_kv", "embed"), kernel_init=kv_init,
                 dtype=self.dtype, weight_dtype=self.weight_dtype, name="out")(out)


_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=True),  # T5 1.1's gelu_new
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


class MlpBlock(nn.Module):
  """T5's feed-forward block; several activations multiply (gated variants).

  One activation gives `wi`; several give `wi_0`, `wi_1`, ... (T5X naming).
  """
  mlp_dim: int
  activations: tuple[str, ...] = ("relu",)
  dropout_rate: float = 0.0
  dropout_mask_bits: int = 8
  dtype: Any = jnp.float32
  weight_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLH: Array, deterministic: bool = True,
               scale_F: Optional[Array] = None) -> Array:
    """`scale_F`: [F] multiplies the intermediate activation before `wo` (IA3)."""
    hidden = None
    for i, act in enumerate(self.activations):
      if act not in _ACTIVATIONS:
        raise ValueError(f"Unknown MLP activation {act!r}; expected one of {sorted(_ACTIVATIONS)}")
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      h = Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype,
                weight_dtype=self.weight_dtype, name=name)(x_BLH)
      h = _ACTIVATIONS[act](h)
      hidden = h if hidden is None else hidden * h
    if scale_F is not None:
      hidden = hidden * scale_F.reshape((1,) * (hidden.ndim - 1) + (-1,)).astype(hidden.dtype)
    if not deterministic and self.dropout_rate > 0:
      hidden = Dropout(self.dropout_rate, self.dropout_mask_bits)(hidden, deterministic=False)
    return Dense(x_BLH.shape[-1], ("mlp", "embed"), dtype=self.dtype,
                 weight_dtype=self.weight_dtype, name="wo")(hidden)
