"""The OpenAI-compatible routes, driven by the official `openai` client against one live server.

The server (in a thread, as in test_serving.py) runs the tiny random T5 and
three prompts; the continuous batcher decodes 4 rows at a time.
"""

import concurrent.futures
import threading
import time

import httpx
import jax
import numpy as np
import openai
import pytest

from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from tests.test_serving import CONFIG, DECODE, P, WORDS, _free_port, _Server

ROWS = 4
BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def live():
  """The server of test_serving.py's flags, its engine built in memory (reading the
  checkpoint is test_serving.py's part), decoding ROWS rows at once."""
  from prompt_tuning.serving import engine as engine_lib
  from prompt_tuning.serving import server
  params = params_lib.init_params(T5(CONFIG), jax.random.PRNGKey(0))
  # One batch bucket (the decode rows): fewer programs to compile.
  engine = engine_lib.Engine(CONFIG, params, P, engine_lib.load_vocabulary("byte"),
                             engine_lib.EngineConfig(capacity=6, batch_buckets=(ROWS,),
                                                     length_buckets=(16,), target_buckets=(8,)))
  rng = np.random.RandomState(0)
  prompts = {name: rng.uniform(-2, 2, (P, CONFIG.emb_dim)).astype(np.float32)
             for name in ("copy", "sort", "count")}
  for name, value in prompts.items():
    engine.prompts.put(name, value)
  config = server.ServeConfig(max_wait_ms=5, max_inputs=4, max_decode_length=16,
                              default_decode_length=DECODE, max_beams=4,
                              max_body_bytes=BODY_LIMIT, backbone_name="backbone",
                              decode_rows=ROWS)
  # Compiling in the background from start-up, as `prompt-tuning serve` does.
  app = server.create_app(engine, config, warmup=True)
  srv = _Server(app, _free_port())
  start = [httpx.get(srv.url + path) for path in ("/livez", "/healthz")]
  deadline = time.time() + 300
  while httpx.get(srv.url + "/healthz").status_code != 200:
    assert time.time() < deadline, "never ready"
    time.sleep(0.05)
  client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
  yield dict(url=srv.url, engine=engine, config=config, client=client, app=app,
             prompts=prompts, start=start)
  srv.stop()


def test_alive_at_once_ready_once_the_first_programs_are_compiled(live):
  livez, healthz = live["start"]
  assert livez.status_code == 200 and livez.json()["status"] == "alive"
  assert healthz.status_code == 503 and healthz.json()["status"] == "starting"
  ready = httpx.get(live["url"] + "/healthz")
  assert ready.status_code == 200 and ready.json()["status"] == "ok"
  assert ready.json()["compiled_programs"] >= 3
  deadline = time.time() + 300
  while httpx.get(live["url"] + "/healthz").json()["warming"]:  # the rest, in the background
    assert time.time() < deadline, "still compiling"
    time.sleep(0.05)


def _generate(url, prompt, inputs, **decoding):
  r = httpx.post(url + "/v1/generate", json={"prompt": prompt, "inputs": inputs,
                                             "decoding": decoding}, timeout=60)
  assert r.status_code == 200, r.text
  return r.json()["outputs"]


def test_models_list_the_backbone_and_every_prompt(live):
  from prompt_tuning.serving import cli
  client = live["client"]
  # By default the backbone is named after its checkpoint's folder.
  assert cli.backbone_name("/m/t5_small/checkpoint_1000") == "t5_small"
  assert cli.backbone_name("/m/flan-t5-base/") == "flan-t5-base"
  models = client.models.list()
  assert [m.id for m in models.data] == ["backbone", "copy", "count", "sort"]
  assert all(m.object == "model" and m.owned_by == "prompt-tuning" for m in models.data)
  assert client.models.retrieve("sort").id == "sort"
  with pytest.raises(openai.NotFoundError):
    client.models.retrieve("nope")


def test_greedy_completions_equal_generate(live):
  client, url, engine = live["client"], live["url"], live["engine"]
  inputs = WORDS[:3]
  out = client.completions.create(model="sort", prompt=inputs, max_tokens=DECODE,
                                  temperature=0, logprobs=2)
  expected = _generate(url, "sort", inputs)
  assert out.object == "text_completion" and out.model == "sort" and out.id.startswith("cmpl-")
  assert [c.index for c in out.choices] == [0, 1, 2]
  assert [c.text for c in out.choices] == [o["text"] for o in expected]
  for choice, want in zip(out.choices, expected):
    assert choice.finish_reason in ("stop", "length")
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(
        lp.text_offset)
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert "".join(lp.tokens) == choice.text
    if choice.finish_reason == "length":  # No EOS: the tokens are the whole score.
      np.testing.assert_allclose(sum(lp.token_logprobs), want["score"], rtol=1e-4, atol=1e-4)
  tokens = [engine.tokenize(x) for x in inputs]
  assert out.usage.prompt_tokens == sum(len(t) for t in tokens)
  assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
  assert 0 < out.usage.completion_tokens <= DECODE * len(inputs)
  # A string prompt.
  one = client.completions.create(model="sort", prompt="hello", max_tokens=DECODE,
                                  temperature=0)
  assert one.choices[0].text == expected[1]["text"]


def test_streaming_sends_each_token_and_ends_with_done(live):
  client, url = live["client"], live["url"]
  whole = client.completions.create(model="copy", prompt="prompt", max_tokens=DECODE,
                                    temperature=0)
  chunks = list(client.completions.create(model="copy", prompt="prompt", max_tokens=DECODE,
                                          temperature=0, stream=True,
                                          stream_options={"include_usage": True}))
  text_chunks = [c for c in chunks if c.choices]
  assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
  assert [c.choices[0].finish_reason for c in text_chunks][-1] == whole.choices[0].finish_reason
  assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
  assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
  # Token by token: one event per decoding step (bytes: one character each).
  assert len(text_chunks) >= len(whole.choices[0].text)
  # The wire format: server-sent events, `data: [DONE]` last.
  with httpx.stream("POST", url + "/v1/completions", timeout=60, json=dict(
      model="copy", prompt="prompt", max_tokens=DECODE, temperature=0, stream=True)) as r:
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.iter_lines() if line]
  assert lines[-1] == "data: [DONE]"
  assert all(line.startswith("data: {") for line in lines[:-1])
  # Sampling streams too, and a seed makes it repeatable across batches.
  kw = dict(model="count", prompt=["abc", "zz"], max_tokens=DECODE, temperature=1.0, top_p=0.9,
            n=2, seed=7)
  sampled = client.completions.create(**kw)
  assert [c.index for c in sampled.choices] == [0, 1, 2, 3]
  streamed = {}
  for chunk in client.completions.create(**kw, stream=True):
    for c in chunk.choices:
      streamed[c.index] = streamed.get(c.index, "") + c.text
  assert [streamed[i] for i in range(4)] == [c.text for c in sampled.choices]
  again = client.completions.create(**kw)
  assert [c.text for c in again.choices] == [c.text for c in sampled.choices]
  other = client.completions.create(**{**kw, "seed": 8})
  assert [c.text for c in other.choices] != [c.text for c in sampled.choices]


def test_stop_strings_cut_the_text(live):
  client = live["client"]
  full = client.completions.create(model="sort", prompt="abc", max_tokens=DECODE,
                                   temperature=0).choices[0].text
  visible = full.strip("\x00")
  assert len(visible) >= 2, repr(full)
  stop = visible[1:3]
  cut = client.completions.create(model="sort", prompt="abc", max_tokens=DECODE,
                                  temperature=0, stop=[stop, "\u2603"])
  assert cut.choices[0].text == full[:full.index(stop)]
  assert cut.choices[0].finish_reason == "stop"
  streamed = "".join(c.choices[0].text for c in client.completions.create(
      model="sort", prompt="abc", max_tokens=DECODE, temperature=0, stop=stop, stream=True))
  assert streamed == cut.choices[0].text


def _openai_error(response, status, code=None, param=None):
  assert response.status_code == status, response.text
  body = response.json()
  assert set(body) == {"error"}, body
  assert set(body["error"]) == {"message", "type", "param", "code"}
  assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
  if code:
    assert body["error"]["code"] == code, body
  if param:
    assert body["error"]["param"] == param, body


def test_bad_input_gets_openai_errors_and_the_server_lives(live):
  client, url = live["client"], live["url"]
  ok = dict(model="copy", prompt="abc", max_tokens=4)
  post = lambda body: httpx.post(url + "/v1/completions", json=body, timeout=60)  # noqa: E731
  cases = [
      (dict(ok, model="nope"), 404, "model_not_found", "model"),
      (dict(ok, n=5), 422, None, "n"),
      (dict(ok, stop=["a", "b", "c", "d", "e"]), 422, None, "stop"),
      (dict(ok, max_tokens=0), 422, None, "max_tokens"),
      (dict(ok, max_tokens=17), 422, None, "max_tokens"),
      (dict(ok, prompt=[]), 422, None, "prompt"),
      (dict(ok, logprobs=6), 422, None, "logprobs"),
      (dict(ok, prompt="x" * 16), 413, "input_too_long", "prompt"),
      (dict(ok, prompt=["a", "b", "c"], n=2), 413, "too_many_inputs", "n"),
      (dict(ok, temperature=-1), 422, None, "temperature"),
      (dict(ok, use_beam_search=True, best_of=2, stream=True), 422, "stream_unsupported",
       "stream"),
      (dict(ok, tempurature=1), 422, "invalid_request", None),
      (dict(ok, prompt="x" * BODY_LIMIT), 413, "body_too_large", None),
  ]
  for body, status, code, param in cases:
    _openai_error(post(body), status, code, param)
  r = httpx.post(url + "/v1/completions", content=b'{"model": "copy", "prompt": ',
                 headers={"content-type": "application/json"})
  _openai_error(r, 400, "malformed_json")
  _openai_error(httpx.get(url + "/v1/models/nope"), 404, "model_not_found")
  # The official client raises its own errors for them.
  with pytest.raises(openai.NotFoundError):
    client.completions.create(**dict(ok, model="nope"))
  with pytest.raises(openai.UnprocessableEntityError, match="does not stream"):
    client.completions.create(**ok, stream=True, extra_body={"use_beam_search": True})
  # The project's own routes keep their error shape.
  r = httpx.post(url + "/v1/generate", json={"prompt": "nope", "inputs": ["a"]})
  assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_prompt"
  assert "request_id" in r.json()
  # Alive, and still right.
  assert httpx.get(url + "/healthz").json()["status"] == "ok"
  good = client.completions.create(**ok, temperature=0)
  assert good.choices[0].finish_reason in ("stop", "length")


def test_the_backbone_name_means_no_prompt_and_one_beam_is_greedy(live):
  # Two paths without a prompt, checked against each other: greedy on the
  # continuous batcher, and one-beam search (exactly greedy) on the whole-loop
  # batcher of /v1/generate.
  client = live["client"]
  kw = dict(model="backbone", prompt=["abc", "hello", "zz"], max_tokens=DECODE)
  greedy = client.completions.create(**kw, temperature=0)
  beam = client.completions.create(**kw, extra_body={"use_beam_search": True, "best_of": 1})
  assert [c.text for c in beam.choices] == [c.text for c in greedy.choices]
  assert [c.finish_reason for c in beam.choices] == [c.finish_reason for c in greedy.choices]
  assert beam.usage == greedy.usage
  prompted = client.completions.create(**{**kw, "model": "sort"}, temperature=0)
  assert [c.text for c in prompted.choices] != [c.text for c in greedy.choices]


def test_continuous_batching_equals_one_at_a_time(live):
  """Requests of mixed prompts and lengths join and leave the running rows between steps,
  and each gets what it gets alone; loading a prompt recompiles nothing."""
  client, app, engine = live["client"], live["app"], live["engine"]
  jobs = [(p, w, m) for p, w, m in zip(["copy", "sort", "count", "backbone"] * 2,
                                       WORDS + ["ab", "ba"], [3, 8, 5, 8, 2, 7, 8, 4])]

  def one(job):
    prompt, word, max_tokens = job
    return client.completions.create(model=prompt, prompt=word, max_tokens=max_tokens,
                                     temperature=0, logprobs=0).choices[0]

  alone = [one(job) for job in jobs]
  decoder = app.state.decoder
  rows_per_step = []
  on_step, admit = decoder._on_step, decoder._admit

  def record(stats):
    rows_per_step.append(stats.rows)
    on_step(stats)
  waited, running_at_admission = [], []

  def admit_once_all_are_queued(admitted):
    # The first admission waits until every request has arrived, so that the
    # rows fill however slowly the client threads start on a loaded machine.
    deadline = time.time() + 60
    while not waited and len(admitted) + decoder.queued < len(jobs) and time.time() < deadline:
      time.sleep(0.01)
    waited.append(True)
    running_at_admission.append(decoder.running)
    admit(admitted)
  decoder._on_step, decoder._admit = record, admit_once_all_are_queued
  try:
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
      together = list(pool.map(one, jobs))
  finally:
    decoder._on_step, decoder._admit = on_step, admit
  assert max(rows_per_step) == ROWS  # All rows busy: the queue fed them as others left.
  # Later requests joined while others were mid-decode (between their calls).
  assert running_at_admission[0] == 0 and max(running_at_admission[1:]) > 0
  for a, b in zip(alone, together):
    assert (a.text, a.finish_reason) == (b.text, b.finish_reason)
    np.testing.assert_allclose(a.logprobs.token_logprobs, b.logprobs.token_logprobs,
                               rtol=1e-5, atol=1e-5)
  # Prompts are data: PUT, use and DELETE compile nothing new.
  compiled = engine.compile_count
  value = live["prompts"]["sort"]
  url = live["url"]
  assert httpx.put(url + "/v1/prompts/sort3", json={"values": value.tolist()}).status_code == 201
  again = client.completions.create(model="sort3", prompt=WORDS[1], max_tokens=8,
                                    temperature=0)
  assert again.choices[0].text == alone[1].text
  assert httpx.delete(url + "/v1/prompts/sort3").status_code == 200
  assert engine.compile_count == compiled


def test_a_cancelled_row_is_freed_at_the_next_step(live):
  from prompt_tuning.serving import continuous
  decoder, engine = live["app"].state.decoder, live["engine"]
  events, done = [], threading.Event()

  def on_event(event):  # Runs on the decode thread, right after the first step.
    events.append(event)
    seq.cancelled = True
    done.set()
  seq = continuous.Completion(inputs=engine.tokenize("abc"), prompt="copy", max_tokens=16,
                              on_event=on_event)
  decoder.submit([seq])
  assert done.wait(30)
  deadline = time.time() + 10
  while decoder.running and time.time() < deadline:
    time.sleep(0.01)
  assert decoder.running == 0
  time.sleep(0.1)
  assert len(events) == 1 and len(seq.output) == 1  # nothing after the cancelling step
  # Over HTTP: a client that reads one chunk and hangs up frees its row.
  url = live["url"]
  with httpx.stream("POST", url + "/v1/completions", timeout=60, json=dict(
      model="copy", prompt="abc", max_tokens=16, temperature=1.0, stream=True)) as r:
    next(r.iter_lines())
  deadline = time.time() + 10
  while httpx.get(url + "/healthz").json()["running_rows"] and time.time() < deadline:
    time.sleep(0.02)
  assert httpx.get(url + "/healthz").json()["running_rows"] == 0


def test_metrics_and_log_fields_carry_token_timings(live):
  import logging
  client, url = live["client"], live["url"]
  records = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(record)
  handler, logger = Keep(), logging.getLogger("prompt_tuning.serving")
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    out = client.completions.create(model="copy", prompt="abc", max_tokens=4, temperature=0)
    deadline = time.time() + 5
    while not any(getattr(r, "fields", {}).get("path") == "/v1/completions" for r in records):
      assert time.time() < deadline, "no request log line"
      time.sleep(0.01)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  fields = next(r.fields for r in records if r.fields.get("path") == "/v1/completions")
  assert fields["completion_tokens"] == out.usage.completion_tokens
  assert fields["ttft_ms"] > 0 and fields["tokens_per_s"] > 0
  assert fields["inter_token_ms"] is None or fields["inter_token_ms"] > 0
  text = httpx.get(url + "/metrics").text
  for name in ("pt_serve_time_to_first_token_seconds_count",
               "pt_serve_inter_token_latency_seconds_count", "pt_serve_running_rows",
               "pt_serve_tokens_per_second", "pt_serve_generated_tokens_total"):
    assert name in text, name
  count = [line for line in text.splitlines()
           if line.startswith("pt_serve_time_to_first_token_seconds_count")]
  assert float(count[0].split()[-1]) >= 1
  rate = [line for line in text.splitlines() if line.startswith("pt_serve_tokens_per_second")]
  assert float(rate[0].split()[-1]) > 0

