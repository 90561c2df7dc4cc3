"""`prompt-tuning serve`: the real server on a free loopback port, a tiny random T5.

The backbone is written as a T5X-layout (Orbax) checkpoint and loaded the way
the binary loads it. One server (in a thread) serves most tests; the SIGTERM
test starts the binary in a subprocess.
"""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import jax
import numpy as np
import pytest

from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from tests.conftest import REPO_ROOT, TINY_CONFIG, fixture_path

# The byte vocabulary needs 259 ids; the quickstart backbones round up to 384.
CONFIG = TINY_CONFIG.replace(vocab_size=384)
P = 3
DECODE = 8
SERVER_FLAGS = ["--batch_buckets=2,8", "--length_buckets=16", "--target_buckets=8",
                f"--default_decode_length={DECODE}", "--max_decode_length=16",
                "--max_inputs=4", "--max_prompts=6", "--max_beams=4"]
WORDS = ["abc", "hello", "zz", "prompt", "q", "serve"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  import orbax.checkpoint as ocp
  root = tmp_path_factory.mktemp("serving")
  backbone = str(root / "backbone")
  ocp.PyTreeCheckpointer().save(os.path.join(backbone, "checkpoint_0"), {
      "target": jax.device_get(params_lib.init_params(T5(CONFIG), jax.random.PRNGKey(0)))})
  rng = np.random.RandomState(0)
  prompts = {}
  for name in ("copy", "sort", "count"):
    prompts[name] = str(root / f"{name}.npy")
    np.save(prompts[name], rng.uniform(-2, 2, (P, CONFIG.emb_dim)).astype(np.float32))
  return dict(backbone=backbone, prompts=prompts, root=root)


def _args(files, *extra):
  import argparse
  from prompt_tuning.serving import cli
  parser = argparse.ArgumentParser()
  cli.add_arguments(parser)
  return parser.parse_args([files["backbone"], "--relative_attention_max_distance=16",
                            *[f"--prompt={n}={p}" for n, p in files["prompts"].items()],
                            *SERVER_FLAGS, *extra])


class _Server:
  """uvicorn in a thread on a free loopback port."""

  def __init__(self, app, port):
    import uvicorn
    self.url = f"http://127.0.0.1:{port}"
    self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                log_config=None, access_log=False))
    self.thread = threading.Thread(target=self.server.run, daemon=True)
    self.thread.start()
    deadline = time.time() + 30
    while not self.server.started:
      assert time.time() < deadline, "server did not start"
      time.sleep(0.02)

  def stop(self):
    self.server.should_exit = True
    self.thread.join(30)


@pytest.fixture(scope="module")
def served(files):
  from prompt_tuning.serving import cli, server
  args = _args(files, "--max_wait_ms=150")
  engine, config = cli.build(args)
  srv = _Server(server.create_app(engine, config), _free_port())
  yield dict(url=srv.url, engine=engine, config=config, args=args)
  srv.stop()


def _post(url, path, body, **kw):
  return httpx.post(url + path, json=body, timeout=60, **kw)


def _assert_error(response, status, code):
  assert response.status_code == status, response.text
  assert "\n" not in response.text.strip()  # one line
  body = response.json()
  assert body["error"]["code"] == code, body
  assert body["error"]["message"]
  assert body["request_id"] == response.headers["x-request-id"]


def test_defaults_bind_loopback(files):
  from prompt_tuning.serving import server
  assert server.ServeConfig().host == "127.0.0.1"
  assert _args(files).host == "127.0.0.1"


def test_endpoints(served):
  url = served["url"]
  r = httpx.get(url + "/healthz", headers={"X-Request-ID": "abc-123"})
  assert r.status_code == 200 and r.json()["status"] == "ok"
  assert r.headers["x-request-id"] == "abc-123" and r.json()["request_id"] == "abc-123"
  listed = httpx.get(url + "/v1/prompts").json()
  assert listed["prompts"] == ["copy", "count", "sort"]
  assert listed["prompt_shape"] == [P, CONFIG.emb_dim] and listed["capacity"] == 6

  gen = _post(url, "/v1/generate", {"prompt": "sort", "inputs": ["abc", "hello"]})
  assert gen.status_code == 200, gen.text
  body = gen.json()
  assert len(body["request_id"]) == 32 and body["request_id"] == gen.headers["x-request-id"]
  assert [set(o) for o in body["outputs"]] == [{"text", "score"}] * 2
  assert all(o["score"] < 0 for o in body["outputs"])

  beam = _post(url, "/v1/generate", {"prompt": "sort", "inputs": ["abc"],
                                     "decoding": {"method": "beam", "num_beams": 2}})
  assert beam.status_code == 200, beam.text

  cands = ["yes", "no", "maybe"]
  sc = _post(url, "/v1/score", {"prompt": "copy", "inputs": ["abc", "zz"], "candidates": cands})
  assert sc.status_code == 200, sc.text
  for res in sc.json()["results"]:
    assert len(res["scores"]) == 3
    assert res["best"] == cands[int(np.argmax(res["scores"]))] == cands[res["best_index"]]

  text = httpx.get(url + "/metrics").text
  for name in ("pt_serve_requests_total", "pt_serve_request_latency_seconds_bucket",
               "pt_serve_queue_wait_seconds_count", "pt_serve_batch_rows_bucket",
               "pt_serve_batch_prompts_bucket"):
    assert name in text, name
  assert 'pt_serve_requests_total{endpoint="/v1/generate",status="200"}' in text


def test_error_catalogue_keeps_the_server_alive(served):
  url = served["url"]
  ok = {"prompt": "copy", "inputs": ["abc"]}
  _assert_error(_post(url, "/v1/generate", {**ok, "prompt": "nope"}), 404, "unknown_prompt")
  _assert_error(_post(url, "/v1/score", {**ok, "prompt": "nope", "candidates": ["a"]}), 404,
                "unknown_prompt")
  _assert_error(httpx.put(url + "/v1/prompts/bad", json={"values": np.zeros(
      (P + 1, CONFIG.emb_dim)).tolist()}), 422, "wrong_prompt_shape")
  _assert_error(httpx.put(url + "/v1/prompts/bad", json={"values": [[1, 2], [3]]}), 422,
                "wrong_prompt_shape")
  _assert_error(_post(url, "/v1/generate", {**ok, "inputs": ["x" * 16]}), 413, "input_too_long")
  _assert_error(_post(url, "/v1/score", {**ok, "candidates": ["y" * 8]}), 413, "input_too_long")
  _assert_error(httpx.post(url + "/v1/generate", content=b'{"prompt": "copy", "inputs": [',
                           headers={"content-type": "application/json"}), 400, "malformed_json")
  _assert_error(httpx.put(url + "/v1/prompts/x", content=b"{nope",
                          headers={"content-type": "application/json"}), 400, "malformed_json")
  _assert_error(httpx.post(url + "/v1/generate", content=json.dumps(ok).encode(),
                           headers={"content-type": "application/x-www-form-urlencoded"}),
                415, "unsupported_media_type")
  _assert_error(_post(url, "/v1/generate", {**ok, "inputs": ["a"] * 5}), 413, "too_many_inputs")
  _assert_error(_post(url, "/v1/score", {**ok, "inputs": ["a"] * 3, "candidates": ["b"] * 3}),
                413, "too_many_inputs")
  for decoding in ({"max_decode_length": 0}, {"max_decode_length": 17},
                   {"method": "beam", "num_beams": 5}, {"method": "sample", "top_p": 1.5},
                   {"method": "sample", "temperature": -1.0}):
    _assert_error(_post(url, "/v1/generate", {**ok, "decoding": decoding}), 422,
                  "invalid_decoding")
  _assert_error(_post(url, "/v1/generate", {**ok, "decoding": {"method": "magic"}}), 422,
                "invalid_request")
  _assert_error(_post(url, "/v1/generate", {**ok, "decodng": {}}), 422, "invalid_request")
  _assert_error(_post(url, "/v1/generate", {**ok, "inputs": []}), 422, "invalid_request")
  _assert_error(httpx.delete(url + "/v1/prompts/nope"), 404, "unknown_prompt")
  _assert_error(httpx.get(url + "/v2/nothing"), 404, "not_found")
  # Still alive, and still right.
  assert httpx.get(url + "/healthz").status_code == 200
  assert _post(url, "/v1/generate", ok).status_code == 200


def _assert_same(outputs, expected):
  """Equal texts, scores equal up to float rounding (batch shapes may differ)."""
  assert [o["text"] for o in outputs] == [o["text"] for o in expected]
  np.testing.assert_allclose([o["score"] for o in outputs], [o["score"] for o in expected],
                             rtol=1e-5, atol=1e-5)


def _generate_all(url, jobs):
  """Sends (prompt, inputs) jobs concurrently; returns the response bodies in order."""
  with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
    responses = list(pool.map(lambda j: _post(url, "/v1/generate",
                                              {"prompt": j[0], "inputs": j[1]}), jobs))
  assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
  return [r.json() for r in responses]


def _predict(files, served, prompt, inputs):
  """What `prompt-tuning infer` computes: evaluation.predict with a soft prompt."""
  from prompt_tuning import decoding, evaluation, readers
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning import trees as tree_lib
  from prompt_tuning.runtime.specs import InferenceSpec
  engine = served["engine"]
  value = np.load(files["prompts"][prompt])
  model = T5(engine.model_config,
             encoder_prompt=soft.SoftPrompt(length=P, init=initializers.from_array(value)))
  params = tree_lib.flatten(readers.load_params(files["backbone"], model,
                                                allow_missing=["encoder_prompt/prompt"]))
  params["encoder_prompt/prompt"] = value
  examples = [{"inputs": np.asarray(engine.tokenize(x), np.int32)} for x in inputs]
  return evaluation.predict(model, tree_lib.unflatten(params), examples, engine.vocabulary,
                            input_length=16, batch_size=8,
                            inference=InferenceSpec(
                                decoding=decoding.DecodingConfig(max_decode_length=DECODE)))


def test_mixed_prompt_batches_equal_single_prompt_results_and_infer(files, served):
  url = served["url"]
  jobs = [("copy", WORDS[:2]), ("sort", WORDS[2:4]), ("count", WORDS[4:]),
          ("sort", WORDS[:1])]
  mixed = _generate_all(url, jobs)
  # They really shared a forward pass across prompts.
  assert max(b["batch"]["prompts"] for b in mixed) >= 2
  assert max(b["batch"]["rows"] for b in mixed) >= 4
  for (prompt, inputs), together in zip(jobs, mixed):
    alone = _post(url, "/v1/generate", {"prompt": prompt, "inputs": inputs}).json()
    assert alone["batch"]["prompts"] == 1
    _assert_same(together["outputs"], alone["outputs"])
  # Rank scoring mixes prompts the same way.
  cands = ["a", "bc"]
  scored = [_post(url, "/v1/score", {"prompt": p, "inputs": ["abc"], "candidates": cands})
            for p in ("copy", "sort")]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    both = list(pool.map(lambda p: _post(url, "/v1/score", {
        "prompt": p, "inputs": ["abc"], "candidates": cands}), ("copy", "sort")))
  for one, two in zip(scored, both):
    np.testing.assert_allclose(one.json()["results"][0]["scores"],
                               two.json()["results"][0]["scores"], rtol=1e-5, atol=1e-5)
  # And equal to what infer's predict gives for that prompt alone.
  expected = _predict(files, served, "copy", WORDS[:2])
  assert [o["text"] for o in mixed[0]["outputs"]] == [t for t, _ in expected]
  np.testing.assert_allclose([o["score"] for o in mixed[0]["outputs"]],
                             [s for _, s in expected], rtol=1e-5, atol=1e-5)


def test_runtime_add_replace_remove_without_recompiling(files, served):
  from jax import monitoring
  url, engine = served["url"], served["engine"]
  before = engine.compile_count
  compiles = []

  def listener(event, duration, **kwargs):
    # A program compiled, or one read from the persistent compilation cache
    # (conftest.py shares one): either is a program the engine asked for anew.
    if event in ("/jax/core/compile/backend_compile_duration",
                 "/jax/compilation_cache/compile_time_saved_sec"):
      compiles.append(duration)
  monitoring.register_event_duration_secs_listener(listener)
  try:
    value = np.load(files["prompts"]["sort"])
    r = httpx.put(url + "/v1/prompts/sort2", json={"values": value.tolist()})
    assert r.status_code == 201 and r.json()["created"] is True, r.text
    assert "sort2" in httpx.get(url + "/v1/prompts").json()["prompts"]
    new = _post(url, "/v1/generate", {"prompt": "sort2", "inputs": WORDS[:2]}).json()
    old = _post(url, "/v1/generate", {"prompt": "sort", "inputs": WORDS[:2]}).json()
    _assert_same(new["outputs"], old["outputs"])  # the same values, another bank row
    # Replace it with other values, sent as a raw .npy body.
    import io
    buf = io.BytesIO()
    np.save(buf, np.load(files["prompts"]["count"]))
    r = httpx.put(url + "/v1/prompts/sort2", content=buf.getvalue(),
                  headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["created"] is False, r.text
    replaced = _post(url, "/v1/generate", {"prompt": "sort2", "inputs": WORDS[:2]}).json()
    count = _post(url, "/v1/generate", {"prompt": "count", "inputs": WORDS[:2]}).json()
    _assert_same(replaced["outputs"], count["outputs"])
    assert httpx.delete(url + "/v1/prompts/sort2").status_code == 200
    _assert_error(_post(url, "/v1/generate", {"prompt": "sort2", "inputs": ["a"]}), 404,
                  "unknown_prompt")
    assert "sort2" not in httpx.get(url + "/v1/prompts").json()["prompts"]
  finally:
    monitoring.unregister_event_duration_listener(listener)
  assert engine.compile_count == before
  assert compiles == []


def test_disconnecting_client_does_not_disturb_its_batch(served):
  url = served["url"]
  baseline = _post(url, "/v1/generate", {"prompt": "copy", "inputs": WORDS[:2]}).json()
  body = json.dumps({"prompt": "sort", "inputs": ["abc"]}).encode()
  port = int(url.rsplit(":", 1)[1])

  def hang_up():
    with socket.create_connection(("127.0.0.1", port)) as s:
      s.sendall(b"POST /v1/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body) + body)
      time.sleep(0.02)  # queued, waiting for its batch (max_wait 150 ms); then gone

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    gone = [pool.submit(hang_up) for _ in range(2)]
    time.sleep(0.005)
    others = [pool.submit(_post, url, "/v1/generate", {"prompt": "copy", "inputs": WORDS[:2]})
              for _ in range(2)]
    for f in gone:
      f.result()
    results = [f.result() for f in others]
  for r in results:
    assert r.status_code == 200, r.text
    _assert_same(r.json()["outputs"], baseline["outputs"])
  assert httpx.get(url + "/healthz").json()["status"] == "ok"


def test_sigterm_drains_in_flight_requests(files, tmp_path):
  port = _free_port()
  cache = tmp_path / "xla"
  cmd = [sys.executable, "-m", "prompt_tuning.cli.main", "serve", files["backbone"],
         "--relative_attention_max_distance=16", f"--port={port}",
         f"--prompt=copy={files['prompts']['copy']}",
         f"--prompt=sort={files['prompts']['sort']}", *SERVER_FLAGS,
         "--no_warmup", "--max_wait_ms=1000", f"--compilation_cache_dir={cache}",
         # One decoding row and long completions: the stream below is still
         # running when SIGTERM comes.
         "--decode_rows=1", "--max_decode_length=128", "--max_inputs=32"]
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + 60
    while True:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      try:
        if httpx.get(url + "/livez", timeout=1).status_code == 200:
          live_at = time.time()
          break
      except httpx.TransportError:
        pass
      assert time.time() < deadline, "serve did not come up"
      time.sleep(0.05)
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200  # --no_warmup: at once
    started, lines, seen_at_sigterm = threading.Event(), [], []

    def stream():
      # Greedy never ends early here (the tiny model emits no EOS in 128 tokens).
      with httpx.stream("POST", url + "/v1/completions", timeout=120, json=dict(
          model="copy", prompt=WORDS[:4] * 8, max_tokens=128, temperature=0,
          stream=True)) as r:
        for line in r.iter_lines():
          if line:
            lines.append(line)
            started.set()
    jobs = [("copy", ["abc"]), ("sort", ["hello", "zz"]), ("copy", ["q"])]
    with concurrent.futures.ThreadPoolExecutor(len(jobs) + 1) as pool:
      streaming = pool.submit(stream)
      assert started.wait(120), streaming.exception() if streaming.done() else "no first chunk"
      futures = [pool.submit(_post, url, "/v1/generate", {"prompt": p, "inputs": x})
                 for p, x in jobs]
      # SIGTERM once all three are in flight (the first batch also compiles).
      while httpx.get(url + "/healthz", timeout=10).json()["in_flight"] < len(jobs):
        assert not any(f.done() for f in futures), "answered before SIGTERM"
        time.sleep(0.01)
      assert not streaming.done(), "the stream ended before SIGTERM; make it longer"
      seen_at_sigterm.append(len(lines))
      proc.send_signal(signal.SIGTERM)
      responses = [f.result() for f in futures]
      streaming.result()
    assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
    assert [len(r.json()["outputs"]) for r in responses] == [1, 2, 1]
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
  with pytest.raises(httpx.TransportError):
    httpx.get(url + "/healthz", timeout=1)
  # The stream in flight at SIGTERM ran to its end: every choice, then [DONE].
  assert seen_at_sigterm[0] < len(lines) and lines[-1] == "data: [DONE]"
  chunks = [json.loads(line[6:]) for line in lines[:-1]]
  finished = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks
              if c["choices"][0]["finish_reason"]}
  assert finished == {i: "length" for i in range(len(WORDS[:4] * 8))}
  # Structured logs: one JSON object per line, each request under its id.
  entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
  logged = {e.get("request_id") for e in entries if e.get("event") == "request"}
  assert {r.json()["request_id"] for r in responses} <= logged
  events = [e.get("event") for e in entries]
  assert events.index("drain") < events.index("stop")
  # The port opened within seconds of the backbone being loaded, and the
  # programs compiled went to the persistent cache for the next start.
  loaded = next(e for e in entries if e.get("event") == "loaded")
  assert live_at - loaded["ts"] < 15
  assert os.listdir(cache)


def test_sentencepiece_vocabulary_and_mismatch(files):
  from prompt_tuning.serving import engine as engine_lib
  vocab = engine_lib.load_vocabulary(fixture_path("t5_spm.model"))
  assert list(vocab.encode("The movie was great!")) == [37, 1974, 47, 248, 55]
  params = params_lib.init_params(T5(CONFIG), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="embedding table only 384 rows"):
    engine_lib.Engine(CONFIG, params, P, vocab)
  with pytest.raises(FileNotFoundError, match="SentencePiece"):
    engine_lib.load_vocabulary("/no/such.model")
