"""OpenAI-compatible routes: `POST /v1/completions`, `GET /v1/models[/{model}]`.

Any OpenAI client, SDK or tool works unchanged: the request's `model` names
the prompt (the frozen backbone's own name means no prompt), `/v1/models`
lists the backbone and every loaded prompt, and errors take OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` with the status codes of
the server's own catalogue.

Greedy and sampled completions run on the continuous batcher, one decoding
step at a time, and stream (`stream: true`) as server-sent events. Beam
search (`use_beam_search`, vLLM's extension, with `best_of` beams) runs on
the whole-loop batcher of `/v1/generate` and does not stream.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import uuid
from typing import Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from prompt_tuning import decoding
from prompt_tuning.serving import continuous
from prompt_tuning.serving.engine import EOS_ID, ServingError

MAX_STOP = 4        # OpenAI's limit on stop strings
MAX_LOGPROBS = continuous.TOP_LOGPROBS  # OpenAI's limit on `logprobs` (5)
MAX_TEMPERATURE = 2.0


class StreamOptions(BaseModel):
  model_config = ConfigDict(extra="forbid")
  include_usage: bool = False


class CompletionRequest(BaseModel):
  """OpenAI's completion request; unknown fields are refused (as OpenAI does)."""
  model_config = ConfigDict(extra="forbid", protected_namespaces=())
  model: str
  prompt: Union[str, list[str], list[int], list[list[int]]]
  max_tokens: Optional[int] = None
  temperature: float = 1.0
  top_p: float = 1.0
  n: int = 1
  stop: Optional[Union[str, list[str]]] = None
  seed: Optional[int] = None
  stream: bool = False
  stream_options: Optional[StreamOptions] = None
  logprobs: Optional[int] = None
  echo: bool = False
  suffix: Optional[str] = None
  presence_penalty: float = 0.0
  frequency_penalty: float = 0.0
  logit_bias: Optional[dict[str, float]] = None
  best_of: Optional[int] = None
  user: Optional[str] = None
  # Extensions, as vLLM names them.
  top_k: int = -1
  use_beam_search: bool = False
  length_penalty: float = 0.6


class _Inbox:
  """Events from the decode thread for one request, handed to the request's event loop
  with at most one wake-up pending. A decoding call delivers many tokens at once; a
  wake-up each would hand the GIL back and forth between the decode thread and the
  event loop once per token."""

  def __init__(self, loop: asyncio.AbstractEventLoop):
    self._loop = loop
    self._lock = threading.Lock()
    self._items: collections.deque = collections.deque()
    self._scheduled = False
    self.queue: asyncio.Queue = asyncio.Queue()

  def put(self, item) -> None:
    """Called on the decode thread."""
    with self._lock:
      self._items.append(item)
      if self._scheduled:
        return
      self._scheduled = True
    self._loop.call_soon_threadsafe(self._flush)

  def _flush(self) -> None:
    with self._lock:
      items, self._items = self._items, collections.deque()
      self._scheduled = False
    for item in items:
      self.queue.put_nowait(item)


def _invalid(param: str, message: str, status: int = 422,
             code: str = "invalid_request") -> ServingError:
  return ServingError(message, status, code, param=param)


def _check_range(name: str, value: float, low: float, high: float) -> None:
  if not low <= value <= high:
    raise _invalid(name, f"{name}={value} is out of range; expected {low}..{high}", 422,
                   "invalid_decoding")


class Completions:
  """The routes' state: the engine, both batchers, the limits and the metrics."""

  def __init__(self, engine, config, batcher, decoder, metrics, parse, json_response):
    self.engine, self.config, self.batcher, self.decoder = engine, config, batcher, decoder
    self.metrics = metrics
    self._parse, self._json = parse, json_response
    self.created = int(time.time())
    self._token_text: dict[int, str] = {}

  # Models.

  def models(self) -> list[dict[str, Any]]:
    backbone = self.config.backbone_name
    out = [dict(id=backbone, object="model", created=self.created, owned_by="prompt-tuning",
                root=backbone, parent=None)]
    for name in self.engine.prompts.names():
      out.append(dict(id=name, object="model", created=self.created, owned_by="prompt-tuning",
                      root=backbone, parent=backbone))
    return out

  def prompt_of(self, model: str) -> Optional[str]:
    """The bank prompt `model` names (None: the backbone alone)."""
    if model == self.config.backbone_name:
      return None
    if model not in self.engine.prompts:
      raise _invalid("model", f"the model {model!r} does not exist; serving "
                     f"{[m['id'] for m in self.models()]}", 404, "model_not_found")
    return model

  # Requests.

  def _inputs(self, body: CompletionRequest) -> list[list[int]]:
    prompt = body.prompt
    if isinstance(prompt, str):
      texts: list[Any] = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
      texts = [prompt]  # One prompt as token ids.
    else:
      texts = list(prompt)
    if not texts:
      raise _invalid("prompt", "prompt is an empty list; expected a string, a list of "
                     f"1..{self.config.max_inputs} strings, or token ids")
    vocab = self.engine.model_config.vocab_size
    ids = []
    for i, text in enumerate(texts):
      if isinstance(text, str):
        row = self.engine.tokenize(text)
      else:
        if not text or not all(0 <= t < vocab for t in text):
          raise _invalid("prompt", f"prompt[{i}]: token ids must be 1 or more of 0..{vocab - 1}")
        row = list(text) + ([] if text[-1] == EOS_ID else [EOS_ID])
      budget = self.engine.config.max_input_length
      if len(row) > budget:
        raise _invalid("prompt", f"prompt[{i}] is {len(row)} tokens (EOS included); the budget "
                       f"is {budget}", 413, "input_too_long")
      ids.append(row)
    return ids

  def _check(self, body: CompletionRequest) -> tuple[int, list[str]]:
    """Range checks; returns (max_tokens, stop strings)."""
    c = self.config
    max_tokens = c.default_decode_length if body.max_tokens is None else body.max_tokens
    _check_range("max_tokens", max_tokens, 1, c.max_decode_length)
    _check_range("n", body.n, 1, c.max_inputs)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
      raise _invalid("stop", f"{len(stop)} stop strings; at most {MAX_STOP}")
    if body.logprobs is not None:
      _check_range("logprobs", body.logprobs, 0, MAX_LOGPROBS)
    _check_range("temperature", body.temperature, 0.0, MAX_TEMPERATURE)
    _check_range("top_p", body.top_p, 0.0, 1.0)
    _check_range("top_k", body.top_k, -1, self.engine.model_config.vocab_size)
    for name, value, default in (("echo", body.echo, False), ("suffix", body.suffix, None),
                                 ("presence_penalty", body.presence_penalty, 0.0),
                                 ("frequency_penalty", body.frequency_penalty, 0.0)):
      if value != default:
        raise _invalid(name, f"{name} is not supported by this server", 422, "unsupported")
    if body.logit_bias:
      raise _invalid("logit_bias", "logit_bias is not supported by this server", 422,
                     "unsupported")
    if body.best_of is not None and not body.use_beam_search and body.best_of != body.n:
      raise _invalid("best_of", "best_of other than n is only taken with use_beam_search "
                     "(as the beam count)", 422, "unsupported")
    return max_tokens, [s for s in stop if s]

  async def create(self, request: Request):
    body = await self._parse(request, CompletionRequest)
    prompt = self.prompt_of(body.model)
    max_tokens, stop = self._check(body)
    ids = self._inputs(body)
    if len(ids) * body.n > self.config.max_inputs:
      raise _invalid("n", f"{len(ids)} prompts x n={body.n} = {len(ids) * body.n} completions; "
                     f"at most {self.config.max_inputs} per request", 413, "too_many_inputs")
    request.state.log_fields = dict(model=body.model, inputs=len(ids), n=body.n,
                                    stream=body.stream)
    response_id = "cmpl-" + uuid.uuid4().hex
    if body.use_beam_search:
      return await self._beam(request, body, prompt, ids, max_tokens, response_id)
    if body.temperature == 0:
      sampling = dict(temperature=0.0, top_k=0, top_p=1.0)
    else:
      sampling = dict(temperature=body.temperature, top_k=max(body.top_k, 0),
                      # top_p 0 keeps the likeliest token only (the filter keeps the first).
                      top_p=body.top_p if body.top_p > 0 else 1e-9)
    seed = body.seed if body.seed is not None else self.decoder.next_seed()
    inbox = _Inbox(asyncio.get_running_loop())
    events = inbox.queue
    seqs = []
    for i, row in enumerate(ids):
      for j in range(body.n):
        index = i * body.n + j

        def on_event(event, index=index):
          inbox.put((index, event))
        seqs.append(continuous.Completion(
            inputs=row, prompt=prompt, max_tokens=max_tokens, stop=stop, on_event=on_event,
            stream=body.stream, logprobs=body.logprobs is not None,
            sampling=continuous.Sampling(seed=seed, stream_index=index, **sampling)))
    self.decoder.submit(seqs)
    usage = dict(prompt_tokens=sum(len(r) for r in ids))
    head = dict(id=response_id, object="text_completion", created=int(time.time()),
                model=body.model)
    if body.stream:
      include_usage = bool(body.stream_options and body.stream_options.include_usage)
      return StreamingResponse(self._stream(request, seqs, events, head, usage, body.logprobs,
                                            include_usage),
                               media_type="text/event-stream",
                               headers={"cache-control": "no-cache"})
    try:
      await self._gather(seqs, events)
    finally:
      for seq in seqs:  # The client left (the handler was cancelled): free their rows.
        seq.cancelled = seq.cancelled or seq.finish_reason is None
    choices = [dict(index=k, text=seq.text, finish_reason=seq.finish_reason,
                    logprobs=self._logprobs(seq.entries, body.logprobs))
               for k, seq in enumerate(seqs)]
    self._log(request, seqs)
    usage["completion_tokens"] = sum(len(s.output) for s in seqs)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return self._json({**head, "choices": choices, "usage": usage})

  async def _gather(self, seqs, events: asyncio.Queue) -> None:
    """Waits until every sequence has finished; raises the first error."""
    left = len(seqs)
    while left:
      index, event = await events.get()
      if event.error is not None:
        raise event.error
      if event.finish_reason is not None:
        left -= 1

  async def _stream(self, request, seqs, events, head, usage, logprobs, include_usage):
    left = len(seqs)
    completion_tokens = 0
    # A chunk without logprobs is this head, then its index, text and finish reason:
    # rendered once here, as `_sse` would render the whole chunk, rather than per token.
    prefix = b"data: " + _dumps(head)[:-1] + b',"choices":[{"index":'
    try:
      failed = False
      while left and not failed:
        # Every event waiting now goes out in one write: still one server-sent event
        # per token, but one send (and one client read) per decoding call.
        batch = [await events.get()]
        while not events.empty():
          batch.append(events.get_nowait())
        out = []
        for index, event in batch:
          if event.error is not None:
            error = event.error
            out.append(_sse({"error": _openai_error_body(
                getattr(error, "status", 500), getattr(error, "code", "internal"),
                str(error), getattr(error, "param", None))}))
            failed = True
            break
          completion_tokens += len(event.tokens)
          if event.finish_reason is not None:
            left -= 1
          if not event.text and event.finish_reason is None and logprobs is None:
            continue  # Nothing to say yet (text held back while a stop string may start).
          if logprobs is None:
            out.append(b"".join((prefix, str(index).encode(), b',"text":', _dumps(event.text),
                                 b',"finish_reason":', _dumps(event.finish_reason),
                                 b',"logprobs":null}]}\n\n')))
            continue
          choice = dict(index=index, text=event.text, finish_reason=event.finish_reason,
                        logprobs=self._logprobs(event.tokens, logprobs))
          out.append(_sse({**head, "choices": [choice]}))
        if out:
          yield b"".join(out)
      if not failed:
        if include_usage:
          usage = dict(usage, completion_tokens=completion_tokens,
                       total_tokens=usage["prompt_tokens"] + completion_tokens)
          yield _sse({**head, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
      self._log(request, seqs)
    finally:
      for seq in seqs:  # Gone mid-stream: the rows are freed at the next step.
        if seq.finish_reason is None:
          seq.cancelled = True

  def _log(self, request: Request, seqs) -> None:
    """The request's log line gains its token timings."""
    ttft = [s.first_token_at - s.submitted for s in seqs if s.first_token_at]
    tokens = sum(len(s.output) for s in seqs)
    gaps = [gap for s in seqs for gap in s.gaps]
    span = max((s.last_token_at for s in seqs if s.last_token_at), default=None)
    start = min(s.submitted for s in seqs)
    fields = getattr(request.state, "log_fields", {})
    fields.update(completion_tokens=tokens,
                  ttft_ms=round(1000 * min(ttft), 2) if ttft else None,
                  inter_token_ms=round(1000 * sum(gaps) / len(gaps), 2) if gaps else None,
                  tokens_per_s=round(tokens / (span - start), 1) if span and span > start
                  else None)
    request.state.log_fields = fields

  def _text_of(self, token: int) -> str:
    if token not in self._token_text:
      self._token_text[token] = self.engine.vocabulary.decode([token])
    return self._token_text[token]

  def _logprobs(self, entries, count: Optional[int]) -> Optional[dict[str, Any]]:
    """OpenAI's legacy logprobs object for the tokens of the text (EOS left out)."""
    if count is None:
      return None
    tokens, token_logprobs, top, offsets, offset = [], [], [], [], 0
    for token, logp, alternatives in entries:
      if token == EOS_ID:
        continue
      text = self._text_of(token)
      tokens.append(text)
      token_logprobs.append(logp)
      top.append({self._text_of(t): lp for t, lp in list(alternatives)[:count]})
      offsets.append(offset)
      offset += len(text)
    return dict(tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top,
                text_offset=offsets)

  async def _beam(self, request, body, prompt, ids, max_tokens, response_id):
    if body.stream:
      raise _invalid("stream", "beam search does not stream: it knows its best sequence only "
                     "when the search ends; send stream: false, or sample instead", 422,
                     "stream_unsupported")
    if body.n != 1 or body.logprobs is not None:
      raise _invalid("n" if body.n != 1 else "logprobs", "beam search returns one completion "
                     "per prompt, without logprobs", 422, "unsupported")
    beams = body.best_of or 4
    _check_range("best_of", beams, 1, self.config.max_beams)
    _check_range("length_penalty", body.length_penalty, 0.0, 10.0)
    dec = decoding.DecodingConfig(method="beam", max_decode_length=max_tokens, num_beams=beams,
                                  alpha=body.length_penalty)
    group = ("generate", dec) if prompt is not None else ("generate", dec, False)
    outputs, _ = await self.batcher.submit(group, prompt or "", ids)
    choices, completion = [], 0
    for k, (text, _, tokens, ended) in enumerate(outputs):
      completion += tokens
      choices.append(dict(index=k, text=text, logprobs=None,
                          finish_reason="stop" if ended else "length"))
    prompt_tokens = sum(len(r) for r in ids)
    return self._json(dict(id=response_id, object="text_completion", created=int(time.time()),
                           model=body.model, choices=choices,
                           usage=dict(prompt_tokens=prompt_tokens, completion_tokens=completion,
                                      total_tokens=prompt_tokens + completion)))


def _dumps(content: Any) -> bytes:
  return json.dumps(content, separators=(",", ":")).encode()


def _sse(content: Any) -> bytes:
  return b"data: " + _dumps(content) + b"\n\n"


def _openai_error_body(status: int, code: str, message: str,
                       param: Optional[str] = None) -> dict[str, Any]:
  return dict(message=message, type="invalid_request_error" if status < 500 else "server_error",
              param=param, code=code)


def openai_error(status: int, code: str, message: str, param: Optional[str] = None):
  """The JSON response OpenAI's clients read as an error."""
  from fastapi.responses import JSONResponse
  return JSONResponse({"error": _openai_error_body(status, code, message, param)},
                      status_code=status)


def add_routes(app: FastAPI, completions: Completions) -> None:
  """Mounts the OpenAI-compatible routes."""

  @app.post("/v1/completions")
  async def create_completion(request: Request):
    return await completions.create(request)

  @app.get("/v1/models")
  async def list_models():
    return completions._json(dict(object="list", data=completions.models()))  # pylint: disable=protected-access

  @app.get("/v1/models/{model:path}")
  async def get_model(model: str):
    for entry in completions.models():
      if entry["id"] == model:
        return completions._json(entry)  # pylint: disable=protected-access
    raise _invalid("model", f"the model {model!r} does not exist", 404, "model_not_found")
