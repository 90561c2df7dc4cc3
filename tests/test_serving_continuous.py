"""The continuous batcher's calls: several steps per call, and calls pipelined.

The device side runs on the tiny random T5 (as in test_serving.py): a call of
k steps gives what k calls of one step give, and a row that joins at a call
boundary decodes as it does alone. The host side runs on a fake of the
device side, which records the order of dispatches and reads.
"""

import time
import types

import jax
import numpy as np
import pytest

from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.serving import continuous
from tests.test_serving import CONFIG, P

ROWS, LENGTH = 3, 8


@pytest.fixture(scope="module")
def engine():
  from prompt_tuning.serving import engine as engine_lib
  params = params_lib.init_params(T5(CONFIG), jax.random.PRNGKey(0))
  eng = engine_lib.Engine(CONFIG, params, P, engine_lib.load_vocabulary("byte"),
                          engine_lib.EngineConfig(capacity=4, batch_buckets=(1,),
                                                  length_buckets=(16,), target_buckets=(8,)))
  rng = np.random.RandomState(0)
  for name in ("copy", "sort"):
    eng.prompts.put(name, rng.uniform(-2, 2, (P, CONFIG.emb_dim)).astype(np.float32))
  return eng


def _settings(temperature=(0.0, 1.0, 0.0)):
  """Row 1 samples (seed 3), the others are greedy."""
  return (np.asarray(temperature, np.float32), np.zeros(ROWS, np.int32),
          np.ones(ROWS, np.float32), np.asarray([0, 3, 0], np.int32), np.zeros(ROWS, np.int32))


def _fresh(*rows):
  fresh = np.zeros(ROWS, bool)
  fresh[list(rows)] = True
  return fresh


def _calls(programs, counts, fresh, settings):
  """Calls of `counts` steps each, the first with `fresh` rows: tokens [S, R], logp [S, R]."""
  tokens, logp = [], []
  for i, k in enumerate(counts):
    out = programs.step(k, fresh if i == 0 else _fresh(), *settings)
    tokens.append(out[0])
    logp.append(out[1])
  return np.concatenate(tokens), np.concatenate(logp)


def test_k_steps_per_call_equal_k_single_steps_and_rows_join_between_calls(engine):
  bank, rows_of = engine.prompts.snapshot()
  ids = [engine.tokenize(w) for w in ("hello", "abc", "serve")]
  assert continuous.StepPrograms(engine, ROWS, LENGTH, 4).step_counts == (1, 2, 4)
  assert continuous.StepPrograms(engine, ROWS, LENGTH, 6).step_counts == (1, 2, 4, 6)
  settings = _settings()
  runs = []
  for before, after in (([4], [2]), ([1] * 4, [1] * 2)):  # Row 2 joins after 4 steps.
    programs = continuous.StepPrograms(engine, ROWS, LENGTH, 4)
    programs.insert(bank, [0, 1], ids[:2], [rows_of["copy"], rows_of["sort"]], True)
    first = _calls(programs, before, _fresh(0, 1), settings)
    programs.insert(bank, [2], ids[2:], [rows_of["sort"]], True)
    then = _calls(programs, after, _fresh(2), settings)
    runs.append((first, then))
  (first_a, then_a), (first_b, then_b) = runs
  for a, b in ((first_a, first_b), (then_a, then_b)):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
  # Rows 0 and 1 went on from their last tokens on the device; each row got what it gets alone.
  for row, (prompt, k) in enumerate((("copy", 0), ("sort", 1), ("sort", 2))):
    alone = continuous.StepPrograms(engine, ROWS, LENGTH, 4)
    alone.insert(bank, [row], [ids[k]], [rows_of[prompt]], True)
    tokens, logp = _calls(alone, [4, 2], _fresh(row), settings)
    got = (np.concatenate([first_a[0], then_a[0]])[:, row] if row < 2 else then_a[0][:, row])
    np.testing.assert_array_equal(got, tokens[:len(got), row])
  # The sampled row differs from greedy decoding of the same input (the settings matter).
  greedy = continuous.StepPrograms(engine, ROWS, LENGTH, 4)
  greedy.insert(bank, [1], [ids[1]], [rows_of["sort"]], True)
  tokens, _ = _calls(greedy, [4], _fresh(1), _settings((0.0, 0.0, 0.0)))
  assert not np.array_equal(tokens[:, 1], first_a[0][:, 1])


def test_a_call_attends_only_the_encoded_positions_its_rows_need():
  """A short row steps at the narrow width (the prompt and 4 input positions) until a
  long one joins, then at the wide one; its tokens equal those of steps at full width."""
  from prompt_tuning.serving import engine as engine_lib
  params = params_lib.init_params(T5(CONFIG), jax.random.PRNGKey(0))
  eng = engine_lib.Engine(CONFIG, params, P, engine_lib.load_vocabulary("byte"),
                          engine_lib.EngineConfig(capacity=2, batch_buckets=(1,),
                                                  length_buckets=(4, 16), target_buckets=(8,)))
  eng.prompts.put("copy", np.random.RandomState(0).uniform(-2, 2, (P, CONFIG.emb_dim)))
  bank, rows_of = eng.prompts.snapshot()
  short, long = eng.tokenize("ab"), eng.tokenize("a longer input")
  programs = continuous.StepPrograms(eng, ROWS, LENGTH, 4)
  assert programs.widths == (P + 4, P + 16)
  assert programs.encoded_positions(len(short), True) == P + 4
  assert programs.encoded_positions(len(long), False) == 16
  assert programs.width_for(16) == P + 16 and programs.width_for(P + 4) == P + 4
  settings = _settings((0.0, 0.0, 0.0))
  tokens = {}
  for narrow in (P + 4, P + 16):
    programs = continuous.StepPrograms(eng, ROWS, LENGTH, 4)
    programs.insert(bank, [0], [short], [rows_of["copy"]], True)
    first = programs.step(2, _fresh(0), *settings, width=narrow)
    programs.insert(bank, [1], [long], [rows_of["copy"]], True)
    then = programs.step(4, _fresh(1), *settings, width=P + 16)
    tokens[narrow] = (first, then)
  for a, b in zip(tokens[P + 4], tokens[P + 16]):
    np.testing.assert_array_equal(a[0][:, :2], b[0][:, :2])
    np.testing.assert_allclose(a[1][:, :2], b[1][:, :2], rtol=1e-5, atol=1e-5)
  # The width matters: a long row cut to the narrow width decodes otherwise.
  cut = continuous.StepPrograms(eng, ROWS, LENGTH, 4)
  cut.insert(bank, [1], [long], [rows_of["copy"]], True)
  assert not np.array_equal(cut.step(4, _fresh(1), *settings, width=P + 4)[1][:, 1],
                            tokens[P + 4][1][1][:, 1])


class _FakePrograms:
  """The device side's interface on the host: row r's token at position t is 10 + 100 r + t,
  so a row's tokens show whether it restarted where it should; a row whose input starts
  with 2 emits EOS at the position its input's second id names."""

  def __init__(self, rows, most, length_buckets=(16,)):
    self.rows = rows
    self.step_counts = tuple(k for k in (1, 2, 4, 8) if k <= most)
    self.engine = types.SimpleNamespace(
        prompts=types.SimpleNamespace(snapshot=lambda: (None, {"p": 0})),
        config=types.SimpleNamespace(length_buckets=length_buckets))
    self.widths = tuple(3 + l for l in length_buckets)  # a prompt of 3
    self.position = np.zeros(rows, np.int64)
    self.eos_at = np.full(rows, -1)
    self.log = []
    self.dispatches = []  # (steps, fresh rows, width) per call
    self.taken = []  # (row, the call it joined, its input) per admitted request
    self.calls = 0

  def insert_buckets(self):
    return (self.rows,)

  def encoded_positions(self, input_length, prompted):
    return 3 + min(l for l in self.engine.config.length_buckets if l >= input_length)

  def width_for(self, encoded):
    return min(w for w in self.widths if w >= encoded)

  def insert(self, bank, slots, inputs, index, prompted):
    for slot, ids in zip(slots, inputs):
      self.eos_at[slot] = ids[1] if ids[0] == 2 else -1
      self.taken.append((slot, self.calls, tuple(ids)))  # taken for the next call
    self.log.append(("insert", tuple(slots)))

  def dispatch(self, steps, fresh, *settings, width=None):
    self.position[fresh] = 0
    pos = self.position[None, :] + np.arange(steps)[:, None]
    tokens = (10 + 100 * np.arange(self.rows)[None, :] + pos).astype(np.int32)
    tokens[pos == self.eos_at[None, :]] = continuous.EOS_ID
    self.position += steps
    self.calls += 1
    self.dispatches.append((steps, set(np.flatnonzero(fresh).tolist()), width))
    self.log.append(("dispatch", self.calls))
    zeros = np.zeros((steps, self.rows), np.float32)
    return (self.calls, tokens, zeros, np.zeros((steps, self.rows, 5), np.float32),
            np.zeros((steps, self.rows, 5), np.int32))

  def ready(self, out):
    self.log.append(("ready", out[0]))
    self.on_ready(out[0])

  def on_ready(self, call):
    """Runs when the host sees call `call` (1-based) done: as if it ran until then."""

  def fetch(self, out):
    self.log.append(("fetch", out[0]))
    return out[1:]


def test_calls_take_the_best_step_count_and_the_next_is_dispatched_before_a_read():
  programs = _FakePrograms(rows=2, most=8)
  vocab = types.SimpleNamespace(decode=lambda ids: "".join(chr(32 + t % 90) for t in ids))
  stats = []
  batcher = continuous.ContinuousBatcher(programs, vocab, on_step=stats.append)
  budgets = [3, 13, 6, 9, 1, 20]
  events = {k: [] for k in range(len(budgets))}
  # Every other one streams: those get an event per token, the others one event at the end.
  seqs = [continuous.Completion(inputs=[5, 1], prompt="p", max_tokens=n, stream=k % 2 == 0,
                                on_event=events[k].append) for k, n in enumerate(budgets)]
  batcher.submit(seqs)
  batcher.start()
  batcher.stop()
  for k, (seq, n) in enumerate(zip(seqs, budgets)):
    assert seq.finish_reason == "length" and len(seq.output) == n
    row = (seq.output[0] - 10) // 100
    assert seq.output == [10 + 100 * row + t for t in range(n)]  # from position 0 on
    assert seq.text == vocab.decode(seq.output)
    assert len(events[k]) == (n if seq.stream else 1)
    assert "".join(e.text for e in events[k]) == seq.text
    assert [e.finish_reason for e in events[k]] == [None] * (len(events[k]) - 1) + ["length"]
  # Tokens past a budget were dropped; calls took several step counts.
  assert all(s.tokens <= s.rows * s.steps for s in stats)
  assert sum(s.tokens for s in stats) == sum(budgets)
  assert {s.steps for s in stats} >= {1, 8}
  # Pipelined: call c + 1 was dispatched once call c had run, before call c was read.
  order = [entry for entry in programs.log if entry[0] != "insert"]
  for c in range(1, programs.calls):
    assert (order.index(("ready", c)) < order.index(("dispatch", c + 1))
            < order.index(("fetch", c)))
  # The step count that delivers the most tokens per unit of time, a call costing
  # CALL_COST_STEPS (2) steps beyond its own.
  assert batcher.CALL_COST_STEPS == 2.0
  assert batcher.steps_for([13]) == 8 and batcher.steps_for([1, 1]) == 1
  assert batcher.steps_for([1] + [30] * 15) == 8  # one row idles 7 steps: cheaper than a call
  assert batcher.steps_for([2, 2, 2, 40]) == 2  # 8 tokens in 4 steps' time (8: 14 in 10)
  assert batcher.steps_for([3, 13]) == 4  # 7 tokens in 6 (2: 4 in 4; 8: 11 in 10)


def test_a_row_is_taken_by_a_waiting_request_at_the_call_after_its_last_token():
  """Rows leave as soon as their last token is in a call (budget) or is read (EOS):
  a waiting request takes the row at the next call, and no row decodes past its
  `max_tokens`. A request that arrives mid-decode joins at the next call boundary.
  Each call attends the narrowest encoding width its running rows need."""
  programs = _FakePrograms(rows=3, most=8, length_buckets=(4, 16))
  vocab = types.SimpleNamespace(decode=lambda ids: "".join(chr(32 + t % 90) for t in ids))
  batcher = continuous.ContinuousBatcher(programs, vocab)
  late = []

  def submit_late(event):
    # Runs on the decode thread at the first delivery, with every row mid-decode.
    if not late:
      late.append(continuous.Completion(inputs=[5, 5, 99] + [5] * 7, prompt="p", max_tokens=7))
      batcher.submit(late)
  # (budget, EOS position or None, input length): two end with EOS, at positions 4 and 0.
  specs = [(11, None, 3), (5, None, 3), (30, 4, 12), (9, None, 3), (6, 0, 3), (17, None, 3),
           (2, None, 3), (13, None, 14)]
  seqs = []
  for tag, (n, eos, length) in enumerate(specs):
    inputs = [2 if eos is not None else 5, eos or 0, tag] + [5] * (length - 3)
    seqs.append(continuous.Completion(inputs=inputs, prompt="p", max_tokens=n,
                                      on_event=submit_late if tag == 0 else (lambda e: None)))
  batcher.submit(seqs)
  batcher.start()
  deadline = time.time() + 30
  while not (late and all(s.finish_reason for s in seqs + late)) and time.time() < deadline:
    time.sleep(0.01)
  batcher.stop()
  for seq, (n, eos, _) in zip(seqs, specs):
    if eos is None:
      assert seq.finish_reason == "length" and len(seq.output) == n
    else:
      assert seq.finish_reason == "stop" and len(seq.output) == eos + 1
      assert seq.output[-1] == continuous.EOS_ID
  assert late[0].finish_reason == "length" and len(late[0].output) == 7
  by_tag = {**{tag: seq for tag, seq in enumerate(seqs)}, 99: late[0]}
  # Every request took a row once, the first three at the first call, and the late
  # one after the first call (it arrived mid-decode) but not at the first.
  assert sorted(ids[2] for _, _, ids in programs.taken) == sorted(by_tag)
  assert [c for _, c, _ in programs.taken[:3]] == [0, 0, 0]
  assert next(c for _, c, ids in programs.taken if ids[2] == 99) > 0
  steps = [k for k, _, _ in programs.dispatches]
  rows = {}
  for row, call, ids in programs.taken:
    rows.setdefault(row, []).append((call, by_tag[ids[2]]))
  for row, occupants in rows.items():
    for (a, seq), (b, _) in zip(occupants, occupants[1:]):
      assert row in programs.dispatches[a][1] and row in programs.dispatches[b][1]  # fresh
      if seq.finish_reason == "length":
        # Freed at the call after the one holding its last token, not a call later.
        assert sum(steps[a:b - 1]) < seq.max_tokens <= sum(steps[a:b])
      else:
        # Its EOS is read after the next call is dispatched: one more call, no more.
        last = next(c for c in range(a, b) if sum(steps[a:c + 1]) >= len(seq.output))
        assert b - last <= 2, (a, b, last)
  # The long inputs (12, 14 and 10 tokens) need 3 + 16 encoded positions, the rest 3 + 4:
  # each call took the narrowest width holding its running rows.
  long_calls = set()
  for row, occupants in rows.items():
    for k, (a, seq) in enumerate(occupants):
      if len(seq.inputs) > 4:
        end = occupants[k + 1][0] if k + 1 < len(occupants) else len(steps)
        long_calls |= set(range(a, end))
  assert long_calls and len(long_calls) < len(steps)
  for c, (_, _, width) in enumerate(programs.dispatches):
    assert width == (19 if c in long_calls else 7), c


def test_a_request_that_arrives_during_a_call_joins_the_next():
  """The next call is dispatched once the last has run, after admitting what arrived
  while it ran: a request sent during call c decodes from call c + 1 on (with a call
  queued ahead, it would wait until c + 2)."""
  programs = _FakePrograms(rows=2, most=8)
  vocab = types.SimpleNamespace(decode=lambda ids: "".join(chr(32 + t % 90) for t in ids))
  batcher = continuous.ContinuousBatcher(programs, vocab)
  late = continuous.Completion(inputs=[5, 0, 7], prompt="p", max_tokens=3)

  def on_ready(call):
    if call == 2:  # It arrives while call 2 runs.
      batcher.submit([late])
  programs.on_ready = on_ready
  first = continuous.Completion(inputs=[5, 0, 1], prompt="p", max_tokens=40)
  batcher.submit([first])
  batcher.start()
  deadline = time.time() + 30
  while not (first.finish_reason and late.finish_reason) and time.time() < deadline:
    time.sleep(0.01)
  batcher.stop()
  assert len(first.output) == 40 and len(late.output) == 3
  joined = [c for row, c, ids in programs.taken if ids[2] == 7]
  assert joined == [2]  # 0-based: the third call
  assert programs.log.index(("ready", 2)) < programs.log.index(("insert", (1,)))


def test_a_cancelled_row_leaves_at_the_next_call_dispatched():
  """A request whose client leaves while a call runs (as a disconnect, seen on the
  event loop, sets `cancelled`) takes no part in the next call dispatched and gets no
  more tokens; the other row goes on."""
  programs = _FakePrograms(rows=2, most=8)
  vocab = types.SimpleNamespace(decode=lambda ids: "".join(chr(32 + t % 90) for t in ids))
  stats = []
  batcher = continuous.ContinuousBatcher(programs, vocab, on_step=stats.append)
  stay = continuous.Completion(inputs=[5, 0, 1], prompt="p", max_tokens=40)
  gone = continuous.Completion(inputs=[5, 0, 2], prompt="p", max_tokens=40)

  def on_ready(call):
    if call == 2:  # The client leaves while call 2 runs (call 1 was read).
      gone.cancelled = True
  programs.on_ready = on_ready
  batcher.submit([stay, gone])
  batcher.start()
  deadline = time.time() + 30
  while not stay.finish_reason and time.time() < deadline:
    time.sleep(0.01)
  batcher.stop()
  assert len(stay.output) == 40 and gone.finish_reason is None
  assert len(gone.output) == programs.dispatches[0][0]  # call 1's tokens, none after
  # Call 3 is the next dispatched after the client left: the row is free in it.
  assert [s.rows for s in stats[:3]] == [2, 2, 1]
  assert all(s.rows == 1 for s in stats[2:])


def test_unstreamed_rows_take_a_calls_tokens_at_once_and_keep_logprobs_only_when_asked():
  """A row that neither streams nor has stop strings takes its tokens of a call in one go
  (up to its budget or EOS, as token by token would); `entries` holds each token's
  (id, log-probability, alternatives) only for a completion that asked for logprobs."""
  programs = _FakePrograms(rows=3, most=8)
  vocab = types.SimpleNamespace(decode=lambda ids: "".join(chr(32 + t % 90) for t in ids))
  batcher = continuous.ContinuousBatcher(programs, vocab)
  events = {k: [] for k in range(3)}
  # Row budgets 13 and 5; the third emits EOS at position 6 (its input starts with 2).
  seqs = [continuous.Completion(inputs=ids, prompt="p", max_tokens=n, stream=False,
                                logprobs=k == 0, on_event=events[k].append)
          for k, (ids, n) in enumerate((([5, 0, 1], 13), ([5, 0, 2], 5), ([2, 6, 3], 20)))]
  batcher.submit(seqs)
  batcher.start()
  batcher.stop()
  first, second, third = seqs
  assert first.finish_reason == second.finish_reason == "length"
  assert len(first.output) == 13 and len(second.output) == 5
  assert third.finish_reason == "stop" and len(third.output) == 7
  assert third.output[-1] == continuous.EOS_ID and continuous.EOS_ID not in third.output[:-1]
  for k, seq in enumerate(seqs):
    row = (seq.output[0] - 10) // 100
    want = [10 + 100 * row + t for t in range(len(seq.output))]
    if seq is third:
      want[-1] = continuous.EOS_ID
    assert seq.output == want
    assert len(events[k]) == 1 and events[k][0].text == seq.text
    assert len(seq.gaps) == len(seq.output) - 1
  assert [e[0] for e in first.entries] == first.output
  assert all(len(alternatives) == 5 for _, _, alternatives in first.entries)
  assert second.entries == [] and third.entries == []
  assert events[1][0].tokens == [(second.output[-1], 0.0, ())]
