"""The HTTP API (FastAPI): generate, score, prompt management, health and metrics.

  POST   /v1/generate        {prompt, inputs: [str], decoding: {method, max_decode_length,
                              num_beams, alpha, temperature, top_k, top_p}}
                             -> {outputs: [{text, score}], ...}
  POST   /v1/score           {prompt, inputs: [str], candidates: [str]}
                             -> {results: [{scores: [per candidate], best, best_index}], ...}
  GET    /v1/prompts         the loaded prompts, the bank's capacity and the prompt shape
  PUT    /v1/prompts/{name}  JSON {values: [[...]]} or a raw .npy body ([P, H])
  DELETE /v1/prompts/{name}
  POST   /v1/completions     OpenAI-compatible (`model` names the prompt), streaming included
  GET    /v1/models[/{id}]   the backbone and every prompt, as OpenAI lists models
  GET    /healthz (ready: 503 until the first programs are compiled), GET /livez (alive),
  GET    /metrics (Prometheus text format)

Every response carries the request id (the X-Request-ID header, echoed or
made up) in that header and, for JSON bodies, as `request_id`. Errors are
one line of JSON: {"error": {"code": ..., "message": ...}, "request_id": ...};
on the OpenAI-compatible routes, OpenAI's {"error": {"message", "type",
"param", "code"}} with the same status codes (see openai_api.py).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import dataclasses
import functools
import io
import json
import logging
import logging.handlers
import queue
import re
import threading
import time
import uuid
from typing import Any, Hashable, Literal, Optional, Sequence

import numpy as np
import prometheus_client as prom
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from prompt_tuning import decoding
from prompt_tuning.serving import continuous, openai_api
from prompt_tuning.serving.batcher import Batcher, BatchStats, Work
from prompt_tuning.serving.engine import Engine, ServingError, UnknownPrompt

log = logging.getLogger("prompt_tuning.serving")

PROMPT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  """Network and request limits (the model-side shapes are in EngineConfig).

  Attributes:
    host, port: where to listen; loopback unless asked otherwise.
    max_wait_ms: how long the oldest queued request may wait for others to
      join its batch.
    max_queue_rows: rows queued at most; beyond, requests get 503.
    max_inputs: inputs per request.
    max_candidates: candidates per score request.
    max_decode_length: the largest `decoding.max_decode_length` accepted.
    default_decode_length: used when a request names none.
    max_beams: the largest `num_beams` accepted.
    max_body_bytes: request bodies beyond this get 413.
    backbone_name: the `model` that names the backbone without a prompt on the
      OpenAI-compatible routes.
    decode_rows: rows the continuous batcher decodes at once (/v1/completions).
    decode_steps: the most decoding steps per device call of the continuous
      batcher: requests join and leave between calls, and a call's tokens
      stream together. A call takes a power of two of steps, or this many:
      the count that delivers the most tokens per unit of time, given the
      running rows' `max_tokens` (`ContinuousBatcher.steps_for`).
  """
  host: str = "127.0.0.1"
  port: int = 8000
  max_wait_ms: float = 5.0
  max_queue_rows: int = 1024
  max_inputs: int = 32
  max_candidates: int = 32
  max_decode_length: int = 128
  default_decode_length: int = 32
  max_beams: int = 8
  max_body_bytes: int = 8 << 20
  backbone_name: str = "backbone"
  decode_rows: int = 16
  decode_steps: int = 8

  def __post_init__(self):
    if not 1 <= self.default_decode_length <= self.max_decode_length:
      raise ValueError(f"ServeConfig.default_decode_length={self.default_decode_length}; "
                       f"expected 1..max_decode_length={self.max_decode_length}")
    if self.max_wait_ms < 0:
      raise ValueError(f"ServeConfig.max_wait_ms={self.max_wait_ms}; expected >= 0")
    if self.decode_rows < 1 or self.decode_steps < 1:
      raise ValueError(f"ServeConfig.decode_rows={self.decode_rows}, decode_steps="
                       f"{self.decode_steps}; expected >= 1")


# Request bodies. Unknown fields are refused so that a misspelt option is not
# silently ignored.


class DecodingOptions(BaseModel):
  model_config = ConfigDict(extra="forbid")
  method: Literal["greedy", "beam", "sample"] = "greedy"
  max_decode_length: Optional[int] = None
  num_beams: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 0.0


class GenerateRequest(BaseModel):
  model_config = ConfigDict(extra="forbid")
  prompt: str
  inputs: list[str]
  decoding: DecodingOptions = DecodingOptions()


class ScoreRequest(BaseModel):
  model_config = ConfigDict(extra="forbid")
  prompt: str
  inputs: list[str]
  candidates: list[str]


def decoding_config(options: DecodingOptions, config: ServeConfig,
                    vocab_size: int) -> decoding.DecodingConfig:
  """Checks ranges; keeps only the options the method uses (one compiled program each)."""
  def check(name, value, low, high):
    if not low <= value <= high:
      raise ServingError(f"decoding.{name}={value} is out of range; expected {low}..{high}",
                         422, "invalid_decoding")
  length = (config.default_decode_length if options.max_decode_length is None
            else options.max_decode_length)
  check("max_decode_length", length, 1, config.max_decode_length)
  if options.method == "greedy":
    return decoding.DecodingConfig(method="greedy", max_decode_length=length)
  if options.method == "beam":
    check("num_beams", options.num_beams, 1, config.max_beams)
    check("alpha", options.alpha, 0.0, 10.0)
    return decoding.DecodingConfig(method="beam", max_decode_length=length,
                                   num_beams=options.num_beams, alpha=options.alpha)
  check("temperature", options.temperature, 1e-3, 100.0)
  check("top_k", options.top_k, 0, vocab_size)
  check("top_p", options.top_p, 0.0, 1.0)
  return decoding.DecodingConfig(method="sample", max_decode_length=length,
                                 temperature=options.temperature, top_k=options.top_k,
                                 top_p=options.top_p)


class Metrics:
  """Prometheus metrics in a registry of their own (several apps may share a process)."""

  def __init__(self):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.requests = prom.Counter("pt_serve_requests", "HTTP requests by endpoint and status",
                                 ["endpoint", "status"], registry=r)
    self.latency = prom.Histogram(
        "pt_serve_request_latency_seconds", "Request latency, arrival to response",
        ["endpoint"], registry=r,
        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
    self.queue_wait = prom.Histogram(
        "pt_serve_queue_wait_seconds", "Time from queueing to the start of its batch",
        registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
    self.batch_rows = prom.Histogram("pt_serve_batch_rows", "Rows per batch", registry=r,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128))
    self.batch_requests = prom.Histogram("pt_serve_batch_requests", "Requests per batch",
                                         registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
    self.batch_prompts = prom.Histogram("pt_serve_batch_prompts",
                                        "Distinct prompts per batch", registry=r,
                                        buckets=(1, 2, 4, 8, 16, 32, 64))
    self.batch_seconds = prom.Histogram(
        "pt_serve_batch_seconds", "Device time per batch", registry=r,
        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
    self.queued_rows = prom.Gauge("pt_serve_queued_rows", "Rows waiting for a batch",
                                  registry=r)
    self.prompts = prom.Gauge("pt_serve_prompts", "Prompts loaded", registry=r)
    self.compiled = prom.Gauge("pt_serve_compiled_programs", "Compiled programs", registry=r)
    # Token-level figures of the continuous batcher (/v1/completions).
    token_buckets = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
    self.ttft = prom.Histogram(
        "pt_serve_time_to_first_token_seconds", "From a completion's arrival to its first token",
        registry=r, buckets=token_buckets)
    self.inter_token = prom.Histogram(
        "pt_serve_inter_token_latency_seconds", "Time between a completion's tokens",
        registry=r, buckets=token_buckets)
    self.running_rows = prom.Gauge("pt_serve_running_rows", "Rows decoding now", registry=r)
    self.generated = prom.Counter("pt_serve_generated_tokens", "Tokens generated", registry=r)
    self.tokens_per_second = prom.Gauge(
        "pt_serve_tokens_per_second", f"Tokens generated per second, over the last "
        f"{self.RATE_WINDOW_S:g} s", registry=r)
    self.step_seconds = prom.Histogram(
        "pt_serve_decode_step_seconds", "Device time per decoding step", registry=r,
        buckets=token_buckets)
    self._recent: collections.deque[tuple[float, int]] = collections.deque()
    self._recent_lock = threading.Lock()

  RATE_WINDOW_S = 10.0

  def on_step(self, stats: continuous.StepStats) -> None:
    """Called on the decode thread after each step."""
    self.step_seconds.observe(stats.seconds)
    self.generated.inc(stats.tokens)
    with self._recent_lock:
      self._recent.append((time.monotonic(), stats.tokens))

  def on_finish(self, seq: continuous.Completion) -> None:
    if seq.first_token_at is not None:
      self.ttft.observe(seq.first_token_at - seq.submitted)
    for gap in seq.gaps:
      self.inter_token.observe(gap)

  def token_rate(self) -> float:
    """Tokens per second over the last RATE_WINDOW_S."""
    now = time.monotonic()
    with self._recent_lock:
      while self._recent and self._recent[0][0] < now - self.RATE_WINDOW_S:
        self._recent.popleft()
      return sum(n for _, n in self._recent) / self.RATE_WINDOW_S

  def on_batch(self, stats: BatchStats) -> None:
    self.batch_rows.observe(stats.rows)
    self.batch_requests.observe(stats.requests)
    self.batch_prompts.observe(stats.prompts)
    self.batch_seconds.observe(stats.run_s)
    for wait in stats.queue_wait_s:
      self.queue_wait.observe(wait)


class WarmUp:
  """Compiles programs on a background thread while the server already listens.

  The `first` programs are those the first requests need; /healthz says
  ready once they are compiled. The `rest` follow, so that later shapes do
  not compile while a request waits (any program a request needs sooner
  compiles on first use).
  """

  def __init__(self, engine: Engine, first: Sequence[Any] = (), rest: Sequence[Any] = ()):
    self.engine, self.first, self.rest = engine, list(first), list(rest)
    self.ready = threading.Event()
    self.error: Optional[BaseException] = None
    self._stopping = threading.Event()
    self._thread: Optional[threading.Thread] = None
    if not self.first:
      self.ready.set()

  @property
  def status(self) -> str:
    return "failed" if self.error else ("ok" if self.ready.is_set() else "starting")

  @property
  def done(self) -> bool:
    """Whether every program of the plan is compiled (or the plan ended)."""
    return self._thread is None or not self._thread.is_alive()

  def start(self) -> None:
    if self.first or self.rest:
      self._thread = threading.Thread(target=self._run, name="warmup", daemon=True)
      self._thread.start()

  def stop(self) -> None:
    """Compiles nothing more; waits for the program compiling now."""
    self._stopping.set()
    if self._thread is not None:
      self._thread.join()

  def _run(self) -> None:
    start = time.monotonic()
    try:
      for i, task in enumerate(self.first + self.rest):
        if self._stopping.is_set():
          return
        task()
        if i + 1 == len(self.first):
          self.ready.set()
          log.info("ready", extra={"fields": dict(
              event="ready", compiled=self.engine.compile_count,
              warmup_s=round(time.monotonic() - start, 1))})
      log.info("warm", extra={"fields": dict(event="warm", compiled=self.engine.compile_count,
                                             warmup_s=round(time.monotonic() - start, 1))})
    except Exception as e:  # pylint: disable=broad-except
      self.error = e
      log.exception("warm-up failed", extra={"fields": dict(event="warmup_failed")})


def warmup_plan(engine: Engine, config: ServeConfig, programs: continuous.StepPrograms
                ) -> WarmUp:
  """The first requests' programs (a decoding step, admitting the fewest and shortest
  rows, /v1/generate's smallest greedy batch), then every other shape."""
  c = engine.config
  dec = decoding.DecodingConfig(max_decode_length=config.default_decode_length)
  smallest = programs.insert_buckets()[0]
  # Every step count: which one a call takes depends on the running rows' budgets. The
  # narrowest encoding first (short inputs); wider ones before the other inserts, since
  # compiling one on first use stalls every running row.
  first = [functools.partial(programs.step_program, k, programs.widths[0])
           for k in programs.step_counts]
  first += [lambda: programs.insert_program(smallest, c.length_buckets[0], True),
           lambda: engine._generate_program(c.batch_buckets[0], c.length_buckets[0], dec)]  # pylint: disable=protected-access
  rest = [functools.partial(programs.step_program, k, w)
          for w in programs.widths[1:] for k in programs.step_counts]
  rest += [functools.partial(programs.insert_program, b, l, True)
           for b in programs.insert_buckets() for l in c.length_buckets]
  return WarmUp(engine, first, rest + engine.warmup_tasks([dec]))


def make_runner(engine: Engine):
  """The batch function the Batcher calls on its worker thread."""
  def run(group: Hashable, items: Sequence[Work]) -> list[Any]:
    bank, rows_of = engine.prompts.snapshot()
    results: list[Any] = [None] * len(items)
    live = []
    prompted = len(group) < 3 or group[2]  # ("generate", dec, False): the backbone alone
    for i, w in enumerate(items):
      if not prompted or w.prompt in rows_of:
        live.append(i)
      else:  # Deleted while it waited.
        results[i] = UnknownPrompt(f"no prompt named {w.prompt!r} (it was deleted)")
    if not live:
      return results
    index = [rows_of[items[i].prompt] if prompted else 0 for i in live for _ in items[i].rows]
    flat = [row for i in live for row in items[i].rows]
    if group[0] == "generate":
      out = engine.generate(bank, index, flat, group[1], prompted)
    else:
      out = list(engine.score(bank, index, [r[0] for r in flat], [r[1] for r in flat]))
    info = {"rows": len(flat), "requests": len(live),
            "prompts": len({items[i].prompt for i in live})}
    start = 0
    for i in live:
      n = len(items[i].rows)
      results[i] = (out[start:start + n], info)
      start += n
    return results
  return run


# Routes whose errors take OpenAI's shape, so that OpenAI clients read them.
OPENAI_ROUTES = ("/v1/completions", "/v1/models")


def _error(status: int, code: str, message: str, request_id: str, path: str = "",
           param: Optional[str] = None) -> JSONResponse:
  if path.startswith(OPENAI_ROUTES):
    return openai_api.openai_error(status, code, message, param)
  return JSONResponse({"error": {"code": code, "message": message}, "request_id": request_id},
                      status_code=status)


def _request_id(request: Request) -> str:
  return getattr(request.state, "request_id", "-")


def _fail(request: Request, status: int, code: str, message: str,
          param: Optional[str] = None) -> JSONResponse:
  """The error response for this request's route (the catalogue's or OpenAI's shape)."""
  return _error(status, code, message, _request_id(request), request.url.path, param)


def _invalid_body(request: Request, errors: Sequence[Any]) -> JSONResponse:
  """415, 400 or 422 for a body that failed validation (pydantic's error list)."""
  kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
  if request.method == "POST" and kind not in ("application/json", ""):
    return _fail(request, 415, "unsupported_media_type", f"the body is {kind}; send JSON with "
                 "Content-Type: application/json")
  if any(err.get("type") == "json_invalid" for err in errors):
    return _fail(request, 400, "malformed_json", "the request body is not valid JSON")
  first = errors[0] if errors else {}
  where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
  more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
  first_field = next((str(p) for p in first.get("loc", ()) if p != "body"), None)
  return _fail(request, 422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}{more}",
               first_field)


async def _parse(request: Request, schema: type[BaseModel]) -> BaseModel:
  """The body validated against `schema` in one pydantic call (JSON parsed in Rust).

  The generate and score routes take the raw request and return
  pre-serialized JSON: FastAPI's per-request dependency solving and its
  `jsonable_encoder` walk of the response were about half of the server's
  CPU per request, on the cores the model needs.
  """
  kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
  if kind not in ("application/json", ""):
    raise _BadBody([])  # _invalid_body answers 415 for the content type.
  try:
    return schema.model_validate_json(await request.body())
  except ValidationError as e:
    raise _BadBody(e.errors(include_url=False)) from e


class _BadBody(Exception):
  def __init__(self, errors: list[Any]):
    super().__init__("invalid request body")
    self.errors = errors


def _json(content: Any, status: int = 200) -> Response:
  return Response(json.dumps(content, separators=(",", ":")).encode(), status_code=status,
                  media_type="application/json")


class RequestContext:
  """ASGI middleware: request id, body-size limit, metrics and one log line per request.

  Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs an extra
  task and stream per request on the hot path.
  """

  def __init__(self, app, config: ServeConfig, metrics: Metrics):
    self.app, self.config, self.metrics = app, config, metrics

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start = time.monotonic()
    headers = dict(scope["headers"])
    given = headers.get(b"x-request-id", b"").decode("latin-1")
    request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    state = scope.setdefault("state", {})
    state["request_id"] = request_id
    status = 500

    async def send_with_id(message):
      nonlocal status
      if message["type"] == "http.response.start":
        status = message["status"]
        message["headers"] = [*message.get("headers", []),
                              (b"x-request-id", request_id.encode())]
      await send(message)

    length = headers.get(b"content-length", b"")
    try:
      if length.isdigit() and int(length) > self.config.max_body_bytes:
        await _error(413, "body_too_large", f"request body of {int(length)} bytes; at most "
                     f"{self.config.max_body_bytes}", request_id, scope["path"])(
                         scope, receive, send_with_id)
      else:
        await self.app(scope, receive, send_with_id)
    finally:
      elapsed = time.monotonic() - start
      endpoint = getattr(scope.get("route"), "path", "unmatched")
      self.metrics.requests.labels(endpoint, str(status)).inc()
      self.metrics.latency.labels(endpoint).observe(elapsed)
      if endpoint not in ("/metrics", "/healthz", "/livez") and log.isEnabledFor(logging.INFO):
        log.info("request", extra={"fields": {
            **state.get("log_fields", {}), "event": "request", "request_id": request_id,
            "method": scope["method"], "path": scope["path"], "status": status,
            "latency_ms": round(1000 * elapsed, 2)}})


def create_app(engine: Engine, config: ServeConfig = ServeConfig(),
               warmup: bool = False) -> FastAPI:
  """The FastAPI app around an engine; with `warmup`, it compiles the programs in the
  background from start-up (/healthz says ready once the first requests' are)."""
  metrics = Metrics()
  batcher = Batcher(make_runner(engine), engine.config.max_batch,
                    config.max_wait_ms / 1000.0, config.max_queue_rows,
                    on_batch=metrics.on_batch)
  decoder = continuous.ContinuousBatcher(
      continuous.StepPrograms(engine, config.decode_rows, config.max_decode_length,
                              config.decode_steps),
      engine.vocabulary, on_step=metrics.on_step, on_finish=metrics.on_finish,
      max_queue=config.max_queue_rows)
  warm = warmup_plan(engine, config, decoder.programs) if warmup else WarmUp(engine)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    batcher.start()
    decoder.start()
    warm.start()
    log.info("serving", extra={"fields": dict(
        event="start", prompts=engine.prompts.names(), compiled=engine.compile_count,
        max_batch=engine.config.max_batch, max_wait_ms=config.max_wait_ms,
        decode_rows=config.decode_rows)})
    yield
    log.info("draining", extra={"fields": dict(event="drain", queued_rows=batcher.queued_rows,
                                               running_rows=decoder.running)})
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, warm.stop)
    await batcher.stop()
    # Streams still open were let finish by uvicorn before this point; the
    # decode thread ends once its rows and queue are empty.
    await loop.run_in_executor(None, decoder.stop)
    log.info("stopped", extra={"fields": dict(event="stop")})

  app = FastAPI(title="prompt-tuning serve", lifespan=lifespan, docs_url=None, redoc_url=None)
  app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics
  app.state.decoder, app.state.warmup = decoder, warm

  app.add_middleware(RequestContext, config=config, metrics=metrics)

  @app.exception_handler(ServingError)
  async def serving_error(request: Request, e: ServingError):
    return _fail(request, e.status, e.code, str(e), e.param)

  @app.exception_handler(RequestValidationError)
  async def invalid_request(request: Request, e: RequestValidationError):
    return _invalid_body(request, e.errors())

  @app.exception_handler(_BadBody)
  async def bad_body(request: Request, e: _BadBody):
    return _invalid_body(request, e.errors)

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request: Request, e: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return _fail(request, e.status_code, code, str(e.detail))

  @app.exception_handler(Exception)
  async def internal_error(request: Request, e: Exception):
    log.error("internal error", exc_info=e, extra={"fields": dict(
        event="error", request_id=_request_id(request))})
    return _fail(request, 500, "internal", f"{type(e).__name__} (see the server log under this "
                 "request id)")

  def check_prompt(name: str) -> None:
    if name not in engine.prompts:
      raise UnknownPrompt(f"no prompt named {name!r}; loaded: {engine.prompts.names()}")

  def check_inputs(inputs: Sequence[str], what: str = "inputs") -> list[list[int]]:
    if not inputs:
      raise ServingError(f"{what} is empty; expected 1..{config.max_inputs} strings", 422,
                         "invalid_request")
    if len(inputs) > config.max_inputs:
      raise ServingError(f"{len(inputs)} {what}; at most {config.max_inputs} per request", 413,
                         "too_many_inputs")
    ids = [engine.tokenize(text) for text in inputs]
    budget = engine.config.max_input_length
    for i, row in enumerate(ids):
      if len(row) > budget:
        raise ServingError(f"{what}[{i}] is {len(row)} tokens (EOS included); the budget is "
                           f"{budget}", 413, "input_too_long")
    return ids

  @app.post("/v1/generate")
  async def generate(request: Request):
    body = await _parse(request, GenerateRequest)
    check_prompt(body.prompt)
    dec = decoding_config(body.decoding, config, engine.model_config.vocab_size)
    ids = check_inputs(body.inputs)
    request.state.log_fields = dict(prompt=body.prompt, inputs=len(ids), decoding=dec.method)
    outputs, info = await batcher.submit(("generate", dec), body.prompt, ids)
    return _json({"request_id": _request_id(request), "prompt": body.prompt,
                  "outputs": [{"text": t, "score": s} for t, s, *_ in outputs], "batch": info})

  @app.post("/v1/score")
  async def score(request: Request):
    body = await _parse(request, ScoreRequest)
    check_prompt(body.prompt)
    ids = check_inputs(body.inputs)
    if not body.candidates or len(body.candidates) > config.max_candidates:
      raise ServingError(f"{len(body.candidates)} candidates; expected 1.."
                         f"{config.max_candidates}", 413 if body.candidates else 422,
                         "too_many_inputs" if body.candidates else "invalid_request")
    cands = [engine.tokenize(c) for c in body.candidates]
    for c, row in zip(body.candidates, cands):
      if len(row) > engine.config.max_target_length:
        raise ServingError(f"candidate {c!r} is {len(row)} tokens (EOS included); the budget "
                           f"is {engine.config.max_target_length}", 413, "input_too_long")
    if len(ids) * len(cands) > engine.config.max_batch:
      raise ServingError(f"{len(ids)} inputs x {len(cands)} candidates = "
                         f"{len(ids) * len(cands)} rows; at most {engine.config.max_batch}",
                         413, "too_many_inputs")
    request.state.log_fields = dict(prompt=body.prompt, inputs=len(ids), candidates=len(cands))
    rows = [(x, c) for x in ids for c in cands]
    scores, info = await batcher.submit(("score",), body.prompt, rows)
    results = []
    for i in range(len(ids)):
      row = [float(s) for s in scores[i * len(cands):(i + 1) * len(cands)]]
      best = int(np.argmax(row))
      results.append({"scores": row, "best": body.candidates[best], "best_index": best})
    return _json({"request_id": _request_id(request), "prompt": body.prompt,
                  "results": results, "batch": info})

  @app.get("/v1/prompts")
  async def list_prompts(request: Request):
    return {"request_id": _request_id(request), "prompts": engine.prompts.names(),
            "capacity": engine.prompts.capacity, "prompt_shape": list(engine.prompts.shape)}

  @app.put("/v1/prompts/{name}")
  async def put_prompt(name: str, request: Request):
    if not PROMPT_NAME.fullmatch(name):
      raise ServingError(f"prompt name {name!r}: expected 1-64 of A-Z a-z 0-9 _ . - "
                         "(starting with a letter or digit)", 422, "invalid_name")
    if name == config.backbone_name:
      raise ServingError(f"{name!r} is the backbone's own name (the `model` that means no "
                         "prompt); choose another", 422, "invalid_name")
    body = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind in ("application/octet-stream", "application/x-npy"):
      try:
        value = np.load(io.BytesIO(body), allow_pickle=False)
      except (ValueError, OSError, EOFError) as e:
        raise ServingError(f"the body is not a plain .npy array: {e}", 422,
                           "wrong_prompt_shape") from e
    else:
      try:
        parsed = json.loads(body)
      except (ValueError, UnicodeDecodeError) as e:
        raise ServingError("the request body is not valid JSON", 400, "malformed_json") from e
      if not isinstance(parsed, dict) or set(parsed) != {"values"}:
        raise ServingError('expected a JSON object {"values": [[...], ...]} ([P, H] numbers) '
                           "or an application/octet-stream .npy body", 422, "invalid_request")
      try:
        value = np.asarray(parsed["values"], np.float64)
      except (ValueError, TypeError) as e:
        raise ServingError(f"values is not a rectangular [P, H] array of numbers "
                           f"(expected {list(engine.prompts.shape)})", 422,
                           "wrong_prompt_shape") from e
    created = engine.prompts.put(name, value)
    metrics.prompts.set(len(engine.prompts.names()))
    request.state.log_fields = dict(prompt=name, created=created)
    return JSONResponse({"request_id": _request_id(request), "prompt": name,
                         "created": created, "compiled_programs": engine.compile_count},
                        status_code=201 if created else 200)

  @app.delete("/v1/prompts/{name}")
  async def delete_prompt(name: str, request: Request):
    engine.prompts.delete(name)
    metrics.prompts.set(len(engine.prompts.names()))
    request.state.log_fields = dict(prompt=name)
    return {"request_id": _request_id(request), "deleted": name}

  @app.get("/healthz")
  async def healthz(request: Request):
    """Ready: 200 once the first requests' programs are compiled, 503 before (or if that failed)."""
    return JSONResponse({
        "request_id": _request_id(request), "status": warm.status,
        "prompts": len(engine.prompts.names()), "compiled_programs": engine.compile_count,
        "queued_rows": batcher.queued_rows, "in_flight": batcher.in_flight,
        "running_rows": decoder.running, "warming": not warm.done},
        status_code=200 if warm.status == "ok" else 503)

  @app.get("/livez")
  async def livez(request: Request):
    """Alive: the process answers (it may still be compiling)."""
    return {"request_id": _request_id(request), "status": "alive"}

  @app.get("/metrics")
  async def prometheus_metrics():
    metrics.running_rows.set(decoder.running)
    metrics.tokens_per_second.set(metrics.token_rate())
    metrics.queued_rows.set(batcher.queued_rows)
    metrics.prompts.set(len(engine.prompts.names()))
    metrics.compiled.set(engine.compile_count)
    return Response(prom.generate_latest(metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

  openai_api.add_routes(app, openai_api.Completions(engine, config, batcher, decoder, metrics,
                                                    _parse, _json))
  return app


class JsonFormatter(logging.Formatter):
  """One JSON object per line: time, level, logger, message and the record's `fields`."""

  def format(self, record: logging.LogRecord) -> str:
    entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
             "logger": record.name, "msg": record.getMessage()}
    entry.update(getattr(record, "fields", {}))
    if record.exc_info:
      entry["exception"] = self.formatException(record.exc_info)
    elif record.exc_text:  # Formatted before it was queued (see configure_logging).
      entry["exception"] = record.exc_text
    return json.dumps(entry, default=str)


_listener: Optional[logging.handlers.QueueListener] = None


def configure_logging(level: str = "INFO") -> None:
  """JSON lines on stderr, written by a thread of their own.

  The event loop only puts each record on a queue: a slow reader of stderr
  (a pipe, a terminal, a log shipper) then cannot stall request handling.
  """
  global _listener
  if _listener is not None:  # Configured again: replace the writer (and its exit hook).
    atexit.unregister(_listener.stop)
    _listener.stop()
  stream = logging.StreamHandler()
  stream.setFormatter(JsonFormatter())
  records: queue.SimpleQueue = queue.SimpleQueue()
  _listener = logging.handlers.QueueListener(records, stream)
  _listener.start()
  atexit.register(_listener.stop)
  handler = _FieldsQueueHandler(records)
  for name in ("prompt_tuning", "uvicorn.error"):
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.setLevel(level)
    logger.propagate = False


class _FieldsQueueHandler(logging.handlers.QueueHandler):
  """Queues records as they are: JsonFormatter (on the listener) reads `fields`
  and formats any traceback itself."""

  def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
    record.msg, record.args = record.getMessage(), None
    if record.exc_info:
      record.exc_text = logging.Formatter().formatException(record.exc_info)
      record.exc_info = None
    return record
