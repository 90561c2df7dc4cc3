"""Continuous batching: decoding one step at a time over a fixed set of rows.

The batcher in `batcher.py` runs a whole decode loop per batch: every row
waits for the longest one, and a request that arrives mid-loop waits for the
whole loop. Here the device holds R decoding rows, and one compiled program
advances every row by one token. Between steps, new requests are encoded
(each with its own prompt, the bank being an argument as everywhere in the
server) and their cross-attention keys and values are written into free
rows; a row that ends (EOS, a stop string, its token budget, its client
gone) is free for the next request at once. Tokens reach their request as
they are chosen, which is what streaming sends.

The per-step call is the model's own cached decoder step (`T5.decode` with
`decode=True`, as `decoding.generate` runs it), one batched step over all R
rows: the cache keeps one decode position per row (`decoding.init_cache`
with `per_row=True`), so rows that joined at different times share every
matrix product, and only the write of each row's new keys and values goes
to its own position. The cross-attention cache has room for the prompt and
the longest input (M positions); shorter encodings are padded and masked,
so a row decodes as it would alone.

Shape key: R rows, M encoded positions (P + the input budget), L decode
positions, V vocabulary, b rows admitted together, l their input length.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding
from prompt_tuning import trees as tree_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.serving.engine import EOS_ID, Engine, ServingError, UnknownPrompt, bucket

log = logging.getLogger(__name__)

TOP_LOGPROBS = 5  # alternatives computed per step (OpenAI's `logprobs` limit)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How one row chooses its tokens: temperature 0 is greedy."""
  temperature: float = 0.0
  top_k: int = 0          # 0 keeps all
  top_p: float = 1.0      # 1 keeps all
  seed: int = 0           # with `stream_index`, the row's random stream
  stream_index: int = 0


@dataclasses.dataclass
class Event:
  """What a row sends its request after a step (or once, on an error)."""
  text: str = ""                       # new text (stop strings cut, held back while one may start)
  tokens: Sequence[tuple[int, float, Sequence[tuple[int, float]]]] = ()  # (id, logp, top)
  finish_reason: Optional[str] = None  # "stop" or "length" on the last event
  error: Optional[BaseException] = None


@dataclasses.dataclass(eq=False)
class Completion:
  """One decoding row's request: its input, options, and what it has produced."""
  inputs: Sequence[int]                # encoder ids, EOS included
  prompt: Optional[str]                # bank prompt name; None: the backbone alone
  max_tokens: int
  sampling: Sampling = Sampling()
  stop: Sequence[str] = ()
  on_event: Callable[[Event], None] = lambda event: None  # called on the decode thread
  stream: bool = True                  # an event per token; False: only the last one (or an error)
  logprobs: bool = True                # keep each token's log-probabilities and alternatives in
                                       # `entries` and events (False: (id, logp, ()) in events only)
  cancelled: bool = False              # set by the request when its client leaves
  submitted: float = dataclasses.field(default_factory=time.monotonic)
  first_token_at: Optional[float] = None
  last_token_at: Optional[float] = None
  output: list[int] = dataclasses.field(default_factory=list)
  entries: list[tuple[int, float, Sequence[tuple[int, float]]]] = dataclasses.field(
      default_factory=list)            # (id, log-probability, top alternatives) per token
  gaps: list[float] = dataclasses.field(default_factory=list)  # seconds between tokens
  text: str = ""                       # text sent so far
  finish_reason: Optional[str] = None


def _filter_rows(logits_RV: jax.Array, top_k_R: jax.Array, top_p_R: jax.Array) -> jax.Array:
  """`decoding`'s top-k then top-p filter, with each row's own k and p."""
  v = logits_RV.shape[-1]
  sorted_RV = -jnp.sort(-logits_RV, axis=-1)
  kth = jnp.take_along_axis(sorted_RV, jnp.clip(top_k_R - 1, 0, v - 1)[:, None], axis=-1)
  cut_k = (top_k_R[:, None] > 0) & (logits_RV < kth)
  logits_RV = jnp.where(cut_k, decoding.NEG_INF, logits_RV)
  sorted_RV = jnp.where((top_k_R[:, None] > 0) & (sorted_RV < kth), decoding.NEG_INF, sorted_RV)
  probs = jax.nn.softmax(sorted_RV, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  cutoff_index = jnp.sum(before < top_p_R[:, None], axis=-1, keepdims=True) - 1
  cutoff = jnp.take_along_axis(sorted_RV, cutoff_index, axis=-1)
  use_p = ((top_p_R > 0) & (top_p_R < 1))[:, None]
  return jnp.where(use_p & (logits_RV < cutoff), decoding.NEG_INF, logits_RV)


def _record(seq: Completion, tokens: Sequence[int], gap: float, now: float) -> None:
  """Appends tokens that reached `seq` together at `now`, `gap` seconds apart (the
  first token of a sequence has no gap before it)."""
  gaps = len(tokens) - (seq.first_token_at is None)
  if seq.first_token_at is None:
    seq.first_token_at = now
  seq.output.extend(tokens)
  seq.gaps.extend([gap] * gaps)
  seq.last_token_at = now


def _entry(tokens_S: Sequence[int], logp_S: Sequence[float], top, s: int
           ) -> tuple[int, float, Sequence[tuple[int, float]]]:
  """(id, log-probability, alternatives) of a row's step s; `top` is the row's
  (ids [S][K], log-probabilities [S][K]), or None for no alternatives."""
  if top is None:
    return (tokens_S[s], logp_S[s], ())
  return (tokens_S[s], logp_S[s], list(zip(top[0][s], top[1][s])))


class StepPrograms:
  """The device side: R rows of decoder state, and the programs that admit and step them."""

  def __init__(self, engine: Engine, rows: int, max_decode_length: int,
               steps_per_call: int = 1):
    self.engine = engine
    self.rows = rows
    self.length = max_decode_length
    self.steps_per_call = steps_per_call
    self.plain = engine.plain_model  # the decoder, and the encoder without a prompt
    self.encoded_length = engine.prompts.shape[0] + engine.config.max_input_length
    params = tree_lib.unflatten(engine._frozen)  # pylint: disable=protected-access
    template = jax.eval_shape(lambda: tree_lib.flatten(decoding.init_cache(
        self.plain, params, rows, self.length, self.encoded_length, per_row=True)))
    cross = {n for n in template if decoding._is_cross(n)}  # pylint: disable=protected-access
    index = [n for n in template if n.endswith("decode_index")]
    if len(index) != 1:
      raise ValueError(f"Expected one decode_index in the decoder cache, found {index}")
    self._index_name = index[0]
    zeros = lambda s: np.zeros(s.shape, s.dtype)  # noqa: E731
    self.cross = jax.device_put({n: zeros(s) for n, s in template.items() if n in cross})
    self.cache = jax.device_put({n: zeros(s) for n, s in template.items() if n not in cross})
    self.enc_mask = jax.device_put(np.zeros((rows, self.encoded_length), bool))
    # Each row's last chosen token stays on the device: the next call starts
    # from it without waiting for the host to read the previous call.
    self.last = jax.device_put(np.zeros((rows,), np.int32))

  @property
  def widths(self) -> tuple[int, ...]:
    """Encoded positions a call may attend (a program each): the prompt and an input
    length bucket. A call reads the narrowest that holds every row's encoding, since the
    cross-attention over all M positions dominated a step on a CPU (for the small
    backbone, 2.2 ms against 1.0 ms at the 26 positions of a short input)."""
    p = self.engine.prompts.shape[0]
    return tuple(sorted({p + l for l in self.engine.config.length_buckets}))

  def width_for(self, encoded: int) -> int:
    """The narrowest of `widths` holding `encoded` positions."""
    return bucket(encoded, self.widths, "encoded length")

  @property
  def step_counts(self) -> tuple[int, ...]:
    """Steps one call may take (a program each): powers of two up to `steps_per_call`."""
    counts = {self.steps_per_call}
    k = 1
    while k < self.steps_per_call:
      counts.add(k)
      k *= 2
    return tuple(sorted(counts))

  # Programs (compiled once per shape; the bank and every row's settings are arguments).

  def _step_fn(self, frozen, cross, enc_mask_RM, cache, token_R, temperature_R, top_k_R, top_p_R,
               seed_R, stream_R):
    params = tree_lib.unflatten(frozen)
    cfg = self.engine.model_config
    position_R = cache[self._index_name]
    # Read only for its shape: the cross-attention keys and values come from the cache.
    encoded = jnp.zeros((self.rows, enc_mask_RM.shape[1], cfg.emb_dim), cfg.activation_dtype)
    logits, mutated = self.plain.apply(
        {"params": params, "cache": tree_lib.unflatten({**cache, **cross})}, encoded,
        enc_mask_RM, token_R[:, None], decode=True, cross_cache="use", mutable=["cache"],
        method=T5.decode)
    new = tree_lib.flatten(mutated["cache"])
    # A free row keeps stepping; holding it at the last position keeps its
    # writes inside the cache until a request takes the row (and resets it).
    cache = {n: new[n] for n in cache}
    cache[self._index_name] = jnp.minimum(cache[self._index_name], self.length - 1)
    logits_RV = logits[:, 0].astype(jnp.float32)
    greedy_R = jnp.argmax(logits_RV, axis=-1).astype(jnp.int32)
    sampling_R = temperature_R > 0

    def sample(_):
      keys = jax.vmap(lambda s, i, p: jax.random.fold_in(jax.random.fold_in(
          jax.random.PRNGKey(s), i), p))(seed_R, stream_R, position_R)
      scaled = logits_RV / jnp.where(sampling_R, temperature_R, 1.0)[:, None]
      filtered = _filter_rows(scaled, top_k_R, top_p_R)
      drawn = jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
      return jnp.where(sampling_R, drawn, greedy_R)

    token_R = jax.lax.cond(jnp.any(sampling_R), sample, lambda _: greedy_R, None)
    # Log-probabilities under the model's own distribution (unfiltered,
    # untempered), as `decoding.temperature_sample` scores.
    logz_R = jax.nn.logsumexp(logits_RV, axis=-1)
    logp_R = jnp.take_along_axis(logits_RV, token_R[:, None], axis=-1)[:, 0] - logz_R
    top_logp, top_ids = jax.lax.top_k(logits_RV, TOP_LOGPROBS)
    return cache, token_R, logp_R, top_logp - logz_R[:, None], top_ids

  def _steps_fn(self, steps, width, frozen, cross, enc_mask_RM, cache, last_R, fresh_R,
                *settings):
    """`steps` steps, each feeding the last token chosen; a fresh row starts from the
    decoder's start token (0), and every row attends the first `width` encoded positions
    (where each running row's encoding lies; the rest is padding). Returns the cache,
    each row's last token, and outputs [S, R, ...]."""
    cross = {n: v[:, :, :width] for n, v in cross.items()}  # [R, N, M, D] -> [R, N, W, D]
    enc_mask_RM = enc_mask_RM[:, :width]

    def one(carry, _):
      cache, token_R = carry
      cache, token_R, *out = self._step_fn(frozen, cross, enc_mask_RM, cache, token_R, *settings)
      return (cache, token_R), (token_R, *out)
    start_R = jnp.where(fresh_R, 0, last_R).astype(jnp.int32)
    (cache, last_R), outs = jax.lax.scan(one, (cache, start_R), None, length=steps)
    return (cache, last_R, *outs)

  def _insert_fn(self, prompted, frozen, bank, cross, enc_mask_RM, cache, tokens_bl, index_b,
                 slots_b):
    params = tree_lib.unflatten(frozen)
    if prompted:
      model = self.engine.model
      encoded, mask = model.apply({"params": self.engine._params(frozen, bank)},  # pylint: disable=protected-access
                                  tokens_bl, prompt_features={"task_index": index_b},
                                  method=T5.encode)
    else:
      encoded, mask = self.plain.apply({"params": params}, tokens_bl, method=T5.encode)
    entries = decoding.cross_cache_entries(self.plain, params, encoded, mask, self.length)
    pad = self.encoded_length - encoded.shape[1]
    cross = dict(cross)
    for name, value in entries.items():  # [b, N, K, D] -> rows [b, N, M, D]
      value = jnp.pad(value, ((0, 0), (0, 0), (0, pad), (0, 0)))
      cross[name] = cross[name].at[slots_b].set(value.astype(cross[name].dtype), mode="drop")
    enc_mask_RM = enc_mask_RM.at[slots_b].set(jnp.pad(mask, ((0, 0), (0, pad))), mode="drop")
    cache = dict(cache)
    # The row restarts at position 0; what the last occupant cached beyond
    # the current position is masked, and overwritten as the row proceeds.
    cache[self._index_name] = cache[self._index_name].at[slots_b].set(0, mode="drop")
    return cross, enc_mask_RM, cache

  def step_program(self, steps: Optional[int] = None, width: Optional[int] = None
                   ) -> Callable:
    """The program of `steps` steps per call (default: `steps_per_call`) attending
    `width` encoded positions (of `widths`; default: the narrowest)."""
    steps = self.steps_per_call if steps is None else steps
    width = self.widths[0] if width is None else width
    r = self.rows
    ints = jax.ShapeDtypeStruct((r,), jnp.int32)
    floats = jax.ShapeDtypeStruct((r,), jnp.float32)
    return self.engine.program(
        ("step", r, self.length, steps, width),
        lambda: (lambda *args: self._steps_fn(steps, width, *args)),
        self.engine._frozen, self.cross,  # pylint: disable=protected-access
        self.enc_mask, self.cache, self.last, jax.ShapeDtypeStruct((r,), jnp.bool_), floats,
        ints, floats, ints, ints, donate=(3, 4))

  def insert_program(self, b: int, l: int, prompted: bool) -> Callable:
    bank, _ = self.engine.prompts.snapshot()
    ints = jax.ShapeDtypeStruct((b,), jnp.int32)
    return self.engine.program(
        ("insert", self.rows, self.length, b, l, prompted),
        lambda: (lambda *args: self._insert_fn(prompted, *args)), self.engine._frozen, bank,  # pylint: disable=protected-access
        self.cross, self.enc_mask, self.cache, jax.ShapeDtypeStruct((b, l), jnp.int32), ints,
        ints, donate=(2, 3, 4))

  def insert_buckets(self) -> tuple[int, ...]:
    """Row counts admitted together: the engine's batch buckets up to R, and R."""
    return tuple(sorted({b for b in self.engine.config.batch_buckets if b < self.rows}
                        | {self.rows}))

  def encoded_positions(self, input_length: int, prompted: bool) -> int:
    """Encoded positions (the prompt's and the padded input's) of a row admitted with
    an input of `input_length` tokens."""
    l = bucket(input_length, self.engine.config.length_buckets, "input length")
    return l + (self.engine.prompts.shape[0] if prompted else 0)

  def insert(self, bank: jax.Array, slots: Sequence[int], inputs: Sequence[Sequence[int]],
             index: Sequence[int], prompted: bool) -> None:
    """Encodes `inputs` (with bank rows `index`, if `prompted`) into rows `slots`."""
    c = self.engine.config
    b = bucket(len(inputs), self.insert_buckets(), "admitted rows")
    l = bucket(max(len(x) for x in inputs), c.length_buckets, "input length")
    tokens = np.zeros((b, l), np.int32)
    for i, ids in enumerate(inputs):
      tokens[i, :len(ids)] = ids
    index_b = np.zeros((b,), np.int32)
    index_b[:len(index)] = index
    slots_b = np.full((b,), self.rows, np.int32)  # padding rows write nowhere (mode="drop")
    slots_b[:len(slots)] = slots
    program = self.insert_program(b, l, prompted)
    self.cross, self.enc_mask, self.cache = program(
        self.engine._frozen, bank, self.cross, self.enc_mask, self.cache, tokens, index_b,  # pylint: disable=protected-access
        slots_b)

  def dispatch(self, steps: int, fresh_R: np.ndarray, temperature_R: np.ndarray,
               top_k_R: np.ndarray, top_p_R: np.ndarray, seed_R: np.ndarray,
               stream_R: np.ndarray, width: Optional[int] = None) -> tuple[jax.Array, ...]:
    """Starts a call of `steps` steps for every row (rows `fresh_R` from the start token),
    attending `width` encoded positions (default: all), and returns at once: (tokens
    [S, R], their log-probabilities [S, R], top log-probabilities [S, R, 5], top ids
    [S, R, 5]), still on the device (`fetch`).

    The host arrays are copied: the call may run after the caller changes them."""
    program = self.step_program(steps, self.widths[-1] if width is None else width)
    self.cache, self.last, *out = program(
        self.engine._frozen, self.cross, self.enc_mask, self.cache, self.last,  # pylint: disable=protected-access
        *(np.array(a) for a in (fresh_R, temperature_R, top_k_R, top_p_R, seed_R, stream_R)))
    return tuple(out)

  @staticmethod
  def ready(out: tuple[jax.Array, ...]) -> None:
    """Waits until a dispatched call has run (its outputs stay on the device)."""
    jax.block_until_ready(out)

  @staticmethod
  def fetch(out: tuple[jax.Array, ...]) -> tuple[np.ndarray, ...]:
    """A dispatched call's outputs on the host (waits for the call)."""
    return tuple(jax.device_get(out))  # One transfer for the four arrays.

  def step(self, steps: int, fresh_R: np.ndarray, *settings: np.ndarray,
           width: Optional[int] = None) -> tuple[np.ndarray, ...]:
    """`dispatch`, then `fetch`."""
    return self.fetch(self.dispatch(steps, fresh_R, *settings, width=width))


@dataclasses.dataclass
class StepStats:
  """One decoding call (`steps` steps), for metrics."""
  rows: int             # rows that decoded
  tokens: int           # tokens delivered
  seconds: float        # the call's time on the device, as the host saw it
  steps: int = 1


@dataclasses.dataclass
class _Call:
  """A dispatched call: its outputs (on the device) and the rows' occupants when it started."""
  out: tuple[jax.Array, ...]
  occupants: list[Optional[Completion]]
  steps: int
  dispatched: float
  ready: Optional[float] = None  # when the host saw it done


class ContinuousBatcher:
  """The host side: a thread that admits requests into free rows and steps them.

  Calls are pipelined: once a call has run, the requests that arrived
  meanwhile are admitted and the next call is dispatched (JAX dispatch
  returns at once) before the host reads the previous one's tokens, turns
  them into text and hands them to the requests, so the device does not
  wait for that work. The next call starts from each row's last token on the
  device. Dispatching only once the last call has run (rather than as soon
  as it was dispatched) lets a request that arrived during a call join the
  next one: with a call queued ahead, it would wait a call longer, and each
  client's next request (sent when its last one ends) with it. A row whose
  every token is already in a dispatched call (its `max_tokens` reached) is
  free for a new request at the next call; a row that ends otherwise (EOS, a
  stop string, its client gone) is found when its call is read, so it takes
  part in one more call, whose tokens are dropped.

  Each call takes the number of steps (of `StepPrograms.step_counts`) that
  delivers the most tokens per unit of time (`steps_for`): a call has a cost
  of its own, so short calls for a row about to end cost more than that row's
  idle steps in a longer call. A row's tokens beyond its budget are dropped.

  Args:
    programs: the device state and programs.
    vocabulary: turns each row's ids into text (stop strings are matched on it).
    on_step: called on the decode thread after every call.
    on_finish: called on the decode thread when a sequence finishes (not when
      it is cancelled).
  """

  def __init__(self, programs: StepPrograms, vocabulary: Any,
               on_step: Optional[Callable[[StepStats], None]] = None,
               on_finish: Optional[Callable[[Completion], None]] = None,
               max_queue: int = 1024):
    self.programs = programs
    self.vocabulary = vocabulary
    self.max_queue = max_queue
    self._on_step = on_step
    self._on_finish = on_finish
    r = programs.rows
    self._slots: list[Optional[Completion]] = [None] * r
    self._pending: collections.deque[Completion] = collections.deque()
    self._cond = threading.Condition()
    self._closing = False
    self._thread: Optional[threading.Thread] = None
    self._seeds = itertools.count(1)
    self._last_ready = 0.0
    # Host copies of each row's settings, sent with every call.
    self._fresh = np.zeros((r,), bool)      # admitted since the last call: start afresh
    self._left = np.zeros((r,), np.int64)   # tokens not yet in a dispatched call
    self._encoded = np.zeros((r,), np.int64)  # encoded positions (prompt and padded input)
    self._temperature = np.zeros((r,), np.float32)
    self._top_k = np.zeros((r,), np.int32)
    self._top_p = np.ones((r,), np.float32)
    self._seed = np.zeros((r,), np.int32)
    self._stream = np.zeros((r,), np.int32)

  @property
  def rows(self) -> int:
    return self.programs.rows

  @property
  def running(self) -> int:
    """Rows whose requests still need decoding calls."""
    return sum(s is not None for s in self._slots)

  @property
  def queued(self) -> int:
    return len(self._pending)

  def next_seed(self) -> int:
    """A seed for a request that named none (a fresh stream for each)."""
    return next(self._seeds) & 0x7FFFFFFF

  def start(self) -> None:
    self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    """Finishes every queued and running sequence, then stops the thread."""
    with self._cond:
      self._closing = True
      self._cond.notify_all()
    if self._thread is not None:
      self._thread.join()

  def submit(self, seqs: Sequence[Completion]) -> None:
    """Queues sequences (one request's, admitted in order); events follow on `on_event`."""
    with self._cond:
      if self._closing:
        raise ServingError("the server is shutting down", 503, "shutting_down")
      if len(self._pending) + len(seqs) > self.max_queue:
        raise ServingError(f"the queue is full ({self.max_queue} sequences); retry later", 503,
                           "overloaded")
      self._pending.extend(seqs)
      self._cond.notify_all()

  # The decode thread.

  def _run(self) -> None:
    call: Optional[_Call] = None  # dispatched, not yet read
    while True:
      if call is not None:
        try:
          self.programs.ready(call.out)
        except Exception:  # pylint: disable=broad-except
          pass  # Raised again where it is read (`_deliver`), and handled there.
        call.ready = time.monotonic()
      with self._cond:
        while (not self._closing and not self._pending and not self.running
               and call is None):
          self._cond.wait()
        if self._closing and not self._pending and not self.running and call is None:
          return
        admitted = []
        free = [i for i, s in enumerate(self._slots) if s is None]
        while self._pending and free:
          seq = self._pending.popleft()
          if not seq.cancelled:
            admitted.append((free.pop(0), seq))
      try:
        if admitted:
          self._admit(admitted)
        following = self._dispatch() if self.running else None
        if call is not None:
          previous, call = call, None
          self._deliver(previous)
        call = following
      except Exception as e:  # pylint: disable=broad-except
        log.exception("decode step failed")
        seqs = {id(s): s for s in self._slots + (call.occupants if call else [])
                if s is not None and s.finish_reason is None}
        self._slots = [None] * self.rows
        call = None
        for seq in seqs.values():
          seq.on_event(Event(error=e))

  def _admit(self, admitted: list[tuple[int, Completion]]) -> None:
    bank, rows_of = self.programs.engine.prompts.snapshot()
    groups: dict[tuple[bool, int], list[tuple[int, Completion]]] = {}
    lengths = self.programs.engine.config.length_buckets
    for slot, seq in admitted:
      if seq.prompt is not None and seq.prompt not in rows_of:  # Deleted while it waited.
        seq.on_event(Event(error=UnknownPrompt(f"no prompt named {seq.prompt!r} (it was "
                                               "deleted)")))
        continue
      key = (seq.prompt is not None, bucket(len(seq.inputs), lengths, "input length"))
      groups.setdefault(key, []).append((slot, seq))
    most = self.programs.insert_buckets()[-1]
    for (prompted, _), members in groups.items():
      for start in range(0, len(members), most):
        part = members[start:start + most]
        self.programs.insert(bank, [s for s, _ in part], [q.inputs for _, q in part],
                             [rows_of[q.prompt] if prompted else 0 for _, q in part], prompted)
        for slot, seq in part:
          self._slots[slot] = seq
          sampling = seq.sampling
          self._fresh[slot] = True  # from the decoder's start token
          self._left[slot] = seq.max_tokens
          self._encoded[slot] = self.programs.encoded_positions(len(seq.inputs), prompted)
          self._temperature[slot] = sampling.temperature
          self._top_k[slot] = sampling.top_k
          self._top_p[slot] = sampling.top_p
          self._seed[slot] = sampling.seed & 0x7FFFFFFF
          self._stream[slot] = sampling.stream_index

  # What a call costs beyond its steps, in steps: dispatching it and the
  # inserts around it, reading it back, and waking the decode thread. On the
  # 2-core EPYC under load, calls of 2 and of 8 steps took 10.2 and 26.0 ms
  # (steps 2.2 ms, an insert 1.8 ms): about 4 ms, or two steps.
  CALL_COST_STEPS = 2.0

  def steps_for(self, left: Sequence[int]) -> int:
    """The step count (of the compiled ones) that delivers the most tokens per unit of
    time, a call costing CALL_COST_STEPS steps beyond its own; `left` holds the running
    rows' budgets. A row that ends inside a call idles until the call ends."""
    def rate(k):
      return sum(min(n, k) for n in left) / (self.CALL_COST_STEPS + k)
    best = self.programs.step_counts[0]
    for k in self.programs.step_counts[1:]:
      if rate(k) > rate(best):  # A tie keeps the shorter call: rows rejoin sooner.
        best = k
    return best

  def _dispatch(self) -> Optional[_Call]:
    """Starts the next call over the running rows (a cancelled row is freed first)."""
    for i, seq in enumerate(self._slots):
      if seq is not None and seq.cancelled:
        self._slots[i] = None
    active = [i for i, s in enumerate(self._slots) if s is not None]
    if not active:
      return None
    steps = self.steps_for([int(self._left[i]) for i in active])
    # Only rows that still decode need their encodings in reach: a free row's output is
    # never read.
    width = self.programs.width_for(max(int(self._encoded[i]) for i in active))
    out = self.programs.dispatch(steps, self._fresh, self._temperature, self._top_k,
                                 self._top_p, self._seed, self._stream, width=width)
    call = _Call(out=out, occupants=list(self._slots), steps=steps,
                 dispatched=time.monotonic())
    self._fresh[:] = False
    for i in active:
      self._left[i] -= steps
      if self._left[i] <= 0:  # Its last token is in this call: the row is free.
        self._slots[i] = None
    return call

  def _free(self, slot: int, seq: Completion) -> None:
    if self._slots[slot] is seq:
      self._slots[slot] = None

  def _deliver(self, call: _Call) -> None:
    """Reads a call's tokens and hands them to its rows' requests."""
    token_SR, logp_SR, top_logp, top_ids = self.programs.fetch(call.out)
    now = time.monotonic()
    ready = call.ready or now
    # The call ran from when it was dispatched or the one before it ended.
    start = max(call.dispatched, self._last_ready)
    self._last_ready = ready
    steps = call.steps
    rows, delivered = sum(s is not None for s in call.occupants), 0
    # One conversion per array, not one per row: this runs once per call for every row.
    tokens_RS, logp_RS = token_SR.T.tolist(), logp_SR.T.tolist()
    tops = None
    for i, seq in enumerate(call.occupants):
      if seq is None or seq.finish_reason is not None:
        continue  # An ended row's extra call: its tokens are dropped.
      if seq.cancelled:  # Its client left: the row is free from here on.
        self._free(i, seq)
        continue
      # A call's tokens arrive together: each counts the call's time per step.
      gap = (now - (seq.last_token_at or start)) / steps
      tokens_S, logp_S = tokens_RS[i], logp_RS[i]
      top = None
      if seq.logprobs:
        if tops is None:
          tops = (np.swapaxes(top_ids, 0, 1).tolist(), np.swapaxes(top_logp, 0, 1).tolist())
        top = (tops[0][i], tops[1][i])
      if not (seq.stream or seq.stop):
        # Nobody reads a token's text before the end (decoded then, once): the row's
        # tokens up to its budget or EOS go in at once.
        m = min(steps, seq.max_tokens - len(seq.output))
        if EOS_ID in tokens_S[:m]:
          m = tokens_S.index(EOS_ID) + 1
        if m <= 0:
          continue
        _record(seq, tokens_S[:m], gap, now)
        delivered += m
        if seq.logprobs:
          seq.entries.extend(_entry(tokens_S, logp_S, top, s) for s in range(m))
        token = tokens_S[m - 1]
        if token != EOS_ID and len(seq.output) < seq.max_tokens:
          continue
        event = self._advance(seq, token)
        event.tokens = [_entry(tokens_S, logp_S, top, m - 1)]
        self._finish(i, seq, event)
        continue
      for s in range(steps):
        if seq.cancelled:  # Its client left: the row is free from here on.
          self._free(i, seq)
          break
        token = tokens_S[s]
        _record(seq, (token,), gap, now)
        delivered += 1
        tokens = [_entry(tokens_S, logp_S, top, s)]
        if seq.logprobs:
          seq.entries.append(tokens[0])
        event = self._advance(seq, token)
        event.tokens = tokens
        if event.finish_reason is not None:  # Later tokens of the call are dropped.
          self._finish(i, seq, event)
          break
        seq.on_event(event)
    if self._on_step is not None:
      self._on_step(StepStats(rows=rows, tokens=delivered, seconds=ready - start, steps=steps))

  def _finish(self, slot: int, seq: Completion, event: Event) -> None:
    """Hands a sequence its last event; its row is free."""
    self._free(slot, seq)
    seq.finish_reason = event.finish_reason
    seq.on_event(event)
    if self._on_finish is not None:
      self._on_finish(seq)

  def _advance(self, seq: Completion, token: int) -> Event:
    """The text the new token adds, and whether the sequence has ended."""
    ids = seq.output[:-1] if token == EOS_ID else seq.output
    text = self.vocabulary.decode(ids)
    finish = None
    if token == EOS_ID:
      finish = "stop"
    cut = min((i for i in (text.find(s) for s in seq.stop) if i >= 0), default=-1)
    if cut >= 0:
      text, finish = text[:cut], "stop"
    if finish is None and len(seq.output) >= seq.max_tokens:
      finish = "length"
    if finish is None and seq.stop:
      # Hold back what may be the start of a stop string.
      hold = max(len(s) for s in seq.stop) - 1
      text = text[:len(text) - hold] if hold else text
    if finish is not None:
      delta = text[len(seq.text):] if text.startswith(seq.text) else ""
      seq.text = text  # The whole text, even where decoding more ids changed earlier text.
      return Event(text=delta, finish_reason=finish)
    if not text.startswith(seq.text):
      # Decoding more ids changed earlier text (SentencePiece joins): wait until it settles.
      return Event()
    delta = text[len(seq.text):]
    seq.text = text
    return Event(text=delta)
