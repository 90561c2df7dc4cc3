"""The batcher's closing rules, with a runner that answers at once (no model)."""

import asyncio
import threading

from prompt_tuning.serving.batcher import Batcher


class Recorder:
  """A runner that records the prompts of every batch it is given."""

  def __init__(self):
    self.batches: list[list[str]] = []
    self.lock = threading.Lock()

  def __call__(self, group, items):
    with self.lock:
      self.batches.append([w.prompt for w in items])
    return [w.prompt for w in items]


async def _burst(batcher: Batcher, names, late=None, late_after_s=0.0):
  """Submits `names` at once and, after `late_after_s`, the `late` one."""
  async def late_one():
    await asyncio.sleep(late_after_s)
    return await batcher.submit("g", late, [late])
  calls = [batcher.submit("g", n, [n]) for n in names]
  if late is not None:
    calls.append(late_one())
  return await asyncio.gather(*calls)


def _run(coro_fn, **batcher_kwargs):
  recorder = Recorder()

  async def main():
    batcher = Batcher(recorder, **batcher_kwargs)
    batcher.start()
    try:
      return await coro_fn(batcher)
    finally:
      await batcher.stop()

  return asyncio.run(main()), recorder.batches


def test_returning_clients_close_their_batch_without_waiting_for_the_deadline():
  # Round 1: three requests; the batch is not full (8 rows), so it waits for
  # the 1 s deadline. Round 2, right after: the same three come back. They
  # make up the whole previous batch, so their batch goes at once, and a
  # fourth request 0.2 s later (well inside the deadline) is not in it.
  async def rounds(batcher):
    first = await _burst(batcher, ["a", "b", "c"])
    second = await _burst(batcher, ["a", "b", "c"], late="d", late_after_s=0.2)
    return first, second

  (first, second), batches = _run(rounds, max_rows=8, max_wait_s=1.0, max_queue_rows=64)
  assert first == ["a", "b", "c"] and second == ["a", "b", "c", "d"]
  assert [sorted(b) for b in batches] == [["a", "b", "c"], ["a", "b", "c"], ["d"]]


def test_after_a_single_request_a_burst_still_waits_to_batch_together():
  # One request alone answers one client: nothing says more are coming, so a
  # later burst within max_wait waits and goes as one batch (the rule above
  # needs at least two returning requests).
  async def rounds(batcher):
    await _burst(batcher, ["a"])
    return await _burst(batcher, ["a", "b"], late="c", late_after_s=0.2)

  result, batches = _run(rounds, max_rows=8, max_wait_s=1.0, max_queue_rows=64)
  assert result == ["a", "b", "c"]
  assert [sorted(b) for b in batches] == [["a"], ["a", "b", "c"]]


def test_a_full_batch_goes_at_once_and_the_rest_waits_for_the_next():
  async def one_round(batcher):
    return await _burst(batcher, ["a", "b", "c", "d", "e"])

  result, batches = _run(one_round, max_rows=2, max_wait_s=1.0, max_queue_rows=64)
  assert result == ["a", "b", "c", "d", "e"]
  assert [len(b) for b in batches] == [2, 2, 1]
  assert sorted(sum(batches, [])) == ["a", "b", "c", "d", "e"]
