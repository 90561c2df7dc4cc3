"""Cross-task dynamic batching: concurrent requests for any prompts, one forward pass.

Requests are queued as `Work` items (a few rows each). The loop takes the
oldest item, waits until its group (same kind and decoding options, any
prompt) has `max_rows` rows or `max_wait_s` has passed (since the oldest
arrived, or since the device became free if it arrived while busy), then
runs those items as one batch on a single worker thread, so the event loop
keeps accepting requests while the device works. A batch finishing
releases the next one at once: whatever queued meanwhile goes together.

Returning clients close a batch early. When a batch has just answered n >= 2
requests, the requests arriving within `max_wait_s` of its end are most
likely those same clients sending their next request (a closed loop, as in
interactive use or a load generator). Their batch closes as soon as n
requests of its group are queued, instead of idling the device until the
deadline while no one else is coming.

An item whose client went away (its future cancelled) is dropped when the
batch is formed, or its result is discarded; the rest of its batch is
unaffected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from typing import Any, Callable, Hashable, Optional, Sequence

from prompt_tuning.serving.engine import ServingError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Work:
  """One request's share of a batch."""
  group: Hashable         # items batch together only within a group
  prompt: str
  rows: Sequence[Any]     # what the runner needs per row
  future: asyncio.Future
  enqueued: float = dataclasses.field(default_factory=time.monotonic)


# runner(group, items) -> one result (or exception) per item; runs off the event loop.
Runner = Callable[[Hashable, Sequence[Work]], Sequence[Any]]


@dataclasses.dataclass
class BatchStats:
  rows: int
  requests: int
  prompts: int
  queue_wait_s: list[float]
  run_s: float


class Batcher:
  """Gathers Work items into batches of at most `max_rows` rows."""

  def __init__(self, runner: Runner, max_rows: int, max_wait_s: float, max_queue_rows: int,
               on_batch: Optional[Callable[[BatchStats], None]] = None):
    if max_rows < 1 or max_wait_s < 0 or max_queue_rows < max_rows:
      raise ValueError(f"Batcher(max_rows={max_rows}, max_wait_s={max_wait_s}, "
                       f"max_queue_rows={max_queue_rows}): expected max_rows >= 1, "
                       "max_wait_s >= 0 and max_queue_rows >= max_rows")
    self._runner = runner
    self.max_rows = max_rows
    self.max_wait_s = max_wait_s
    self.max_queue_rows = max_queue_rows
    self._on_batch = on_batch
    self._pending: list[Work] = []
    self._wakeup: Optional[asyncio.Event] = None
    self._task: Optional[asyncio.Task] = None
    self._closing = False
    self.in_flight = 0  # requests submitted and not yet answered
    self._free_since = 0.0  # when the last batch finished
    self._last_requests = 0  # requests the last batch answered
    # One thread: the device runs one batch at a time, in order.
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batch")

  @property
  def queued_rows(self) -> int:
    return sum(len(w.rows) for w in self._pending)

  def start(self) -> None:
    self._wakeup = asyncio.Event()
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self) -> None:
    """Finishes every queued item, then stops the loop and the worker thread."""
    self._closing = True
    if self._wakeup is not None:
      self._wakeup.set()
    if self._task is not None:
      await self._task
    self._executor.shutdown(wait=True)

  async def submit(self, group: Hashable, prompt: str, rows: Sequence[Any]) -> Any:
    """Queues rows and waits for their result."""
    if self._closing:
      raise ServingError("the server is shutting down", 503, "shutting_down")
    if len(rows) > self.max_rows:
      raise ServingError(f"{len(rows)} rows in one request; at most {self.max_rows}", 413,
                         "too_many_inputs")
    if self.queued_rows + len(rows) > self.max_queue_rows:
      raise ServingError(f"the queue is full ({self.max_queue_rows} rows); retry later", 503,
                         "overloaded")
    work = Work(group, prompt, rows, asyncio.get_running_loop().create_future())
    self._pending.append(work)
    self._wakeup.set()
    self.in_flight += 1
    try:
      # A cancelled waiter (client gone) cancels only its own future.
      return await work.future
    finally:
      self.in_flight -= 1

  def _group_load(self, group: Hashable) -> tuple[int, int]:
    """(rows, requests) of the live items of `group`."""
    live = [w for w in self._pending if w.group == group and not w.future.done()]
    return sum(len(w.rows) for w in live), len(live)

  def _ready(self, group: Hashable, returning: int) -> bool:
    """Whether the group's batch is full, or holds every returning client."""
    rows, requests = self._group_load(group)
    return rows >= self.max_rows or (returning >= 2 and requests >= returning)

  def _take(self, group: Hashable) -> list[Work]:
    """Oldest-first items of `group` (live ones) up to max_rows; drops dead ones."""
    taken, rows, keep = [], 0, []
    for w in self._pending:
      if w.future.done():  # Cancelled: its client went away before it ran.
        continue
      if w.group == group and rows + len(w.rows) <= self.max_rows:
        taken.append(w)
        rows += len(w.rows)
      else:
        keep.append(w)
    self._pending = keep
    return taken

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      self._pending = [w for w in self._pending if not w.future.done()]
      if not self._pending:
        if self._closing:
          return
        self._wakeup.clear()
        await self._wakeup.wait()
        continue
      first = self._pending[0]
      # The wait starts when the oldest request arrived or, if it came while
      # the device was busy, when the device became free: the clients the
      # last batch just answered get `max_wait_s` to send their next request
      # and join, instead of the queue splitting into two half batches.
      deadline = max(first.enqueued, self._free_since) + self.max_wait_s
      returning = (self._last_requests
                   if first.enqueued - self._free_since <= self.max_wait_s else 0)
      while (not self._closing and not self._ready(first.group, returning)
             and (remaining := deadline - time.monotonic()) > 0):
        self._wakeup.clear()
        try:
          await asyncio.wait_for(self._wakeup.wait(), remaining)
        except asyncio.TimeoutError:
          break
      batch = self._take(first.group)
      if not batch:
        continue
      start = time.monotonic()
      try:
        results = await loop.run_in_executor(self._executor, self._runner, first.group, batch)
      except Exception as e:  # pylint: disable=broad-except
        log.exception("batch failed")
        results = [e] * len(batch)
      end = self._free_since = time.monotonic()
      self._last_requests = len(batch)
      for w, result in zip(batch, results):
        if w.future.done():  # The client left while its batch ran.
          continue
        if isinstance(result, BaseException):
          w.future.set_exception(result)
        else:
          w.future.set_result(result)
      if self._on_batch is not None:
        self._on_batch(BatchStats(rows=sum(len(w.rows) for w in batch), requests=len(batch),
                                  prompts=len({w.prompt for w in batch}),
                                  queue_wait_s=[start - w.enqueued for w in batch],
                                  run_s=end - start))
