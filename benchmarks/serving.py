"""Load test of `prompt-tuning serve`: cross-task batching vs one request at a time.

The quickstart's small backbone (width 128, 3 + 3 layers, byte vocabulary)
serves 8 prompts (10 tokens, sampled-vocabulary initializations, seeds 0-7).
Two real server processes run side by side over loopback:

  batched    batch buckets 1..32, max wait 5 ms (requests for any prompt share a pass)
  unbatched  batch bucket 1 (one request, one row, per forward pass and decode loop)

A closed-loop asyncio aiohttp client keeps C requests in flight (C = 8, 16, 32);
each request is one input for a round-robin prompt, greedy decoding of up to
8 tokens. Every run stops by itself after REQUESTS responses or SECONDS
seconds. Modes alternate within each round (the order flips every round);
medians over ROUNDS rounds are reported.

The client is aiohttp rather than httpx: on this 2-core machine httpx spent
2.4-3.5 ms of CPU per request against aiohttp's 0.3-0.5 ms (and the server's
0.4-1.0 ms), more than the model's own work per request, so with httpx the
load test mostly measured its own client.

Every response is checked against `prompt-tuning infer` (evaluation.infer,
the function the binary runs) for the same prompt and input: same text,
score within 1e-4.

Run: python benchmarks/serving.py   (writes results/<machine>/serving.json and
.md; notes below report.NOTES_MARKER in an existing serving.md are kept;
`--workload=lengths` writes results/<machine>/serving_lengths.json and .md)

The `lengths` workload (`--workload=lengths`) compares the continuous batcher
of /v1/completions with today's whole-loop batcher of /v1/generate on one
server (decode rows 16, batch buckets 1..16), modes alternating in each round:
every request draws its output length n between 4 and 64 tokens (greedy).

  whole_loop          /v1/generate with max_decode_length 64 (one compiled
                      loop; a batch ends with its longest row), aiohttp
  continuous          /v1/completions, max_tokens n, streamed, aiohttp
  continuous_unstreamed  the same, not streamed (one JSON answer, as whole_loop)
  continuous_openai   the same through the async `openai` client

Every response is checked against the same request sent alone to /v1/generate
before the load: the whole-loop text equals it, a completion's text is its
prefix (equal when it ended with EOS). Reported: requests/s, generated
tokens/s, p50/p99 latency, and the median time to the first streamed token.
`--random_backbone` serves a randomly initialized backbone of the small shape
(no pretraining; the figures are about the server, not the answers).
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import machine, report  # noqa: E402

NUM_PROMPTS, PROMPT_LENGTH, NUM_INPUTS, DECODE = 8, 10, 64, 8
CONCURRENCY = (8, 16, 32)
ROUNDS, REQUESTS, SECONDS = 3, 1000, 15.0
MAX_WAIT_MS = 5.0
MODES = {
    "batched": ["--batch_buckets=1,2,4,8,16,32", f"--max_wait_ms={MAX_WAIT_MS}"],
    "unbatched": ["--batch_buckets=1", "--max_wait_ms=0"],
}


def backbone() -> str:
  """The quickstart's cached small backbone (built into benchmarks/.cache_serving if absent)."""
  from prompt_tuning import backbones
  cfg = backbones.PretrainConfig(size="small")
  cached = backbones.backbone_path(backbones.default_cache_dir(), cfg)
  if os.path.exists(os.path.join(cached, "DONE")):
    return cached
  return backbones.pretrain(cfg, os.path.join(HERE, ".cache_serving"), progress=False)


def make_prompts(path: str, folder: str) -> dict[str, np.ndarray]:
  from prompt_tuning.prompts import initializers
  import jax
  prompts = {}
  for k in range(NUM_PROMPTS):
    init = initializers.sampled_vocab(embeddings=path, first_n=259, seed=k)
    prompts[f"p{k}"] = np.asarray(init(jax.random.PRNGKey(k), (PROMPT_LENGTH, 128)))
    np.save(os.path.join(folder, f"p{k}.npy"), prompts[f"p{k}"])
  return prompts


def infer_references(path: str, prompts: dict[str, np.ndarray], work: str) -> dict:
  """{(prompt, input): (prediction, score)} from evaluation.infer, per prompt."""
  from prompt_tuning import backbones, decoding, evaluation
  from prompt_tuning.prompts import initializers, soft
  from prompt_tuning.runtime.specs import DataSpec, InferenceSpec, ModelSpec
  from prompt_tuning.tasks import synthetic
  import prompt_tuning.tasks  # noqa: F401  (registers the synthetic tasks)
  refs = {}
  for name, value in prompts.items():
    out = evaluation.infer(
        model_dir=os.path.join(work, name),
        model=ModelSpec(backbones.backbone_config("small"), path,
                        soft.SoftPrompt(length=PROMPT_LENGTH,
                                        init=initializers.from_array(value))),
        data=DataSpec("synthetic_reverse_bare", synthetic.FEATURE_LENGTHS, 32,
                      split="validation"),
        inference=InferenceSpec(restore=False,
                                decoding=decoding.DecodingConfig(max_decode_length=DECODE),
                                max_examples=NUM_INPUTS))
    with open(out) as f:
      for line in f:
        row = json.loads(line)
        refs[(name, row["input"])] = (row["prediction"], row["score"])
  return refs


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(path: str, prompt_dir: str, flags: list[str], log_path: str):
  port = free_port()
  cmd = [sys.executable, "-m", "prompt_tuning.cli.main", "serve", path,
         f"--prompt_dir={prompt_dir}", "--relative_attention_max_distance=32",
         f"--port={port}", "--length_buckets=16", "--target_buckets=8",
         f"--default_decode_length={DECODE}", f"--max_decode_length={DECODE}",
         "--log_level=WARNING", *flags]
  log = open(log_path, "w")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=log, stderr=log)
  return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc, url: str, timeout: float = 900) -> None:
  import httpx
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"server exited with {proc.returncode}")
    try:
      r = httpx.get(url + "/healthz", timeout=2)
      # Ready, and done compiling in the background (it would slow the timed runs).
      if r.status_code == 200 and not r.json().get("warming"):
        return
    except httpx.TransportError:
      pass
    time.sleep(0.5)
  raise TimeoutError(f"{url} did not come up")


def batch_stats(url: str) -> dict:
  """Cumulative batch counters from /metrics."""
  import httpx
  out = {}
  for line in httpx.get(url + "/metrics").text.splitlines():
    for name in ("pt_serve_batch_rows_sum", "pt_serve_batch_rows_count",
                 "pt_serve_batch_seconds_sum",
                 "pt_serve_batch_prompts_sum", "pt_serve_queue_wait_seconds_sum",
                 "pt_serve_queue_wait_seconds_count", "pt_serve_decode_step_seconds_sum",
                 "pt_serve_decode_step_seconds_count"):
      if line.startswith(name + " "):
        out[name] = float(line.split()[1])
  return out


async def load(url: str, jobs: list[tuple[str, str]], clients: int, requests: int,
               seconds: float) -> dict:
  """Closed loop: `clients` workers, each sends its next job when the last one returns."""
  import aiohttp
  latencies, responses, errors = [], [], 0
  next_job = 0
  stop_at = time.monotonic() + seconds
  connector = aiohttp.TCPConnector(limit=clients)
  timeout = aiohttp.ClientTimeout(total=120)
  async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
    async def worker():
      nonlocal next_job, errors
      while next_job < requests and time.monotonic() < stop_at:
        prompt, text = jobs[next_job % len(jobs)]
        next_job += 1
        t0 = time.monotonic()
        async with session.post("/v1/generate", json={"prompt": prompt,
                                                       "inputs": [text]}) as r:
          body = await r.json()
        latencies.append(time.monotonic() - t0)
        if r.status != 200:
          errors += 1
          continue
        responses.append((prompt, text, body["outputs"][0]))
    start = time.monotonic()
    await asyncio.gather(*[worker() for _ in range(clients)])
    wall = time.monotonic() - start
  lat = np.asarray(latencies)
  return dict(requests=len(latencies), errors=errors, seconds=wall,
              rps=len(latencies) / wall, p50_ms=1000 * float(np.percentile(lat, 50)),
              p99_ms=1000 * float(np.percentile(lat, 99)), responses=responses)


def check(responses, refs) -> tuple[int, float]:
  """(mismatches, max |score diff|) against infer."""
  bad, worst = 0, 0.0
  for prompt, text, out in responses:
    want_text, want_score = refs[(prompt, text)]
    diff = abs(out["score"] - want_score)
    worst = max(worst, diff)
    if out["text"] != want_text or diff > 1e-4:
      bad += 1
  return bad, worst


def markdown(result: dict) -> str:
  """serving.md from its JSON (`main`), or serving_lengths.md (`main_lengths`); the
  hand-written notes that follow are kept by `report`."""
  if result.get("workload") == "lengths":
    return lengths_markdown(result)
  m = result["machine"]
  lines = [
      "# Serving: cross-task batching vs one request at a time",
      "",
      "`python benchmarks/serving.py` (raw figures in `serving.json`). Two real "
      "`prompt-tuning serve` processes over loopback on the quickstart's small backbone "
      "(width 128, 3 + 3 layers, byte vocabulary), "
      f"{result['prompts']} prompts of {result['prompt_length']} tokens; a closed-loop "
      "asyncio `aiohttp` client keeps C requests in flight, each request one input for a "
      f"round-robin prompt, greedy decoding of up to {result['decode_length']} tokens. "
      f"Each run stops after {result['max_requests_per_run']} responses or "
      f"{result['max_seconds_per_run']:.0f} s; the two servers alternate within each of "
      f"{result['rounds']} rounds (order flipped every round); medians.",
      "",
      # "cpu": the name the first results used for the model.
      f"Machine: {m.get('cpu_model', m.get('cpu'))}, {m['cores']} cores, AVX-512: "
      f"{'yes' if m['avx512'] else 'no'} "
      "(AVX2 only); the client, both servers and the model share these cores, and the "
      "machine is shared with other jobs: load average "
      f"{m['load_average_at_start'][0]:.1f} at the start, {m['load_average_at_end'][0]:.1f} "
      "at the end.",
      "",
      f"- **batched**: batch buckets 1-32 rows, max wait {result['max_wait_ms']:.0f} ms; "
      "requests for any of the prompts share one forward pass and one decode loop.",
      "- **unbatched**: batch bucket 1, max wait 0: one request per forward pass.",
      "",
      "| clients | mode | requests/s | p50 ms | p99 ms | rows / batch | prompts / batch "
      "| device ms / batch | device busy | queue wait ms |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for clients, row in result["summary"].items():
    for mode in ("batched", "unbatched"):
      r = row[mode]
      lines.append(f"| {clients} | {mode} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                   f"{r['p99_ms']:.1f} | {r['mean_batch_rows']:.1f} | "
                   f"{r['mean_batch_prompts']:.1f} | {r['mean_batch_ms']:.1f} | "
                   f"{100 * r['device_busy']:.0f}% | {r['mean_queue_wait_ms']:.1f} |")
  lines += ["", "| clients | throughput batched / unbatched (median of rounds) | batched p99 "
            "| budget: 2 x unbatched p50 + max wait | within |", "| --- | --- | --- | --- | --- |"]
  for clients, row in result["summary"].items():
    lines.append(f"| {clients} | {row['throughput_ratio']:.2f}x | "
                 f"{row['batched']['p99_ms']:.1f} ms | {row['p99_budget_ms']:.1f} ms | "
                 f"{'yes' if row['p99_within_budget'] else 'no'} |")
  lines += ["", f"Outputs: {result['responses_checked']} responses checked against "
            "`prompt-tuning infer` (`evaluation.infer`, same prompt and input, one infer run "
            f"per prompt): {result['mismatches_vs_infer']} mismatches; texts identical, "
            f"largest score difference {result['max_score_diff_vs_infer']:.1e} (float "
            "rounding from different batch and padding shapes). Servers exited with "
            f"{result['server_exit_codes']} after SIGTERM.", ""]
  return "\n".join(lines) + "\n"  # a blank line before any notes


def _machine_line(m: dict) -> str:
  return (f"Machine: {m.get('cpu_model', m.get('cpu'))}, {m['cores']} cores, AVX-512: "
          f"{'yes' if m['avx512'] else 'no'}; the client, the server and the model share "
          "these cores, and the machine is shared with other jobs: load average "
          f"{m['load_average_at_start'][0]:.1f} at the start, "
          f"{m['load_average_at_end'][0]:.1f} at the end.")


def lengths_markdown(result: dict) -> str:
  """serving_lengths.md from its JSON (`main_lengths`)."""
  lo, hi = result["lengths"]
  fmt = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
  lines = [
      "# Serving: continuous batching vs the whole-loop batcher, output lengths "
      f"{lo}-{hi}",
      "",
      "`python benchmarks/serving.py --workload=lengths"
      f"{' --random_backbone' if result['random_backbone'] else ''}` (raw figures in "
      "`serving_lengths.json`). One `prompt-tuning serve` process over loopback, "
      f"flags `{' '.join(result['server_flags'])}`; "
      + ("a randomly initialized backbone of the quickstart's small shape (it never emits "
         "EOS, so every request decodes exactly its n tokens)"
         if result["random_backbone"] else "the quickstart's small backbone")
      + f", {result['prompts']} prompts of {result['prompt_length']} tokens. Each request "
      f"draws its output length n in {lo}..{hi} (greedy). A closed-loop client keeps C "
      f"requests in flight; each run stops after {result['max_requests_per_run']} responses "
      f"or {result['max_seconds_per_run']:.0f} s; the modes alternate within each of "
      f"{result['rounds']} rounds (order flipped every round); medians of the rounds.",
      "",
      _machine_line(result["machine"]),
      "",
      f"- **whole_loop**: `/v1/generate` with max_decode_length {hi}, aiohttp: one compiled "
      "decode loop per batch, which ends with its longest row.",
      "- **continuous**: `/v1/completions` with `max_tokens` n, streamed, aiohttp: rows "
      "join and leave the running batch between decoding calls.",
      "- **continuous_unstreamed**: the same, not streamed: one JSON answer per request, "
      "as whole_loop's.",
      "- **continuous_openai**: the streamed one through the async `openai` client.",
      "",
      "| clients | mode | requests/s | tokens/s | p50 ms | p99 ms | TTFT p50 ms | "
      "TTFT p99 ms | ms / decoding call | decoding busy |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for clients, row in result["summary"].items():
    for mode in LENGTH_MODES:
      r = row[mode]
      busy = r.get("decode_busy")
      lines.append(f"| {clients} | {mode} | {r['rps']:.1f} | {r['tokens_per_s']:.0f} | "
                   f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {fmt(r['ttft_p50_ms'])} | "
                   f"{fmt(r['ttft_p99_ms'])} | {fmt(r.get('decode_call_ms'))} | "
                   f"{'-' if busy is None else format(busy, '.0%')} |")
  lines += ["", "| clients | throughput / whole loop: streamed | not streamed | p99 ms: "
            "whole loop | streamed | not streamed | TTFT p50 (streamed) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
  for clients, row in result["summary"].items():
    c, w = row["continuous"], row["whole_loop"]
    u = row.get("continuous_unstreamed")
    lines.append(f"| {clients} | {row['throughput_ratio']:.2f}x | "
                 f"{fmt(row.get('throughput_ratio_unstreamed'), '.2f')}x | {w['p99_ms']:.1f} | "
                 f"{c['p99_ms']:.1f} | {fmt(u and u['p99_ms'])} | {fmt(c['ttft_p50_ms'])} ms |")
  lines += ["", f"Outputs: {result['responses_checked']} responses checked against the same "
            "request sent alone to `/v1/generate` before the load (whole loop: equal; a "
            "completion: its prefix, equal where it ended with EOS): "
            f"{result['mismatches']} mismatches. The server exited with "
            f"{result['server_exit_code']} after SIGTERM.", ""]
  return "\n".join(lines) + "\n"


# The `lengths` workload.
LENGTHS = (4, 64)
LENGTH_MODES = ("whole_loop", "continuous", "continuous_unstreamed", "continuous_openai")
LENGTH_FLAGS = ["--batch_buckets=1,2,4,8,16", "--decode_rows=16", f"--max_wait_ms={MAX_WAIT_MS}",
                f"--max_decode_length={LENGTHS[1]}", f"--default_decode_length={LENGTHS[1]}",
                "--compilation_cache_dir="]


def random_backbone(work: str) -> str:
  """A randomly initialized backbone of the quickstart's small shape, as a T5X checkpoint."""
  import jax
  import orbax.checkpoint as ocp
  from prompt_tuning import backbones
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  path = os.path.join(work, "random_small")
  params = params_lib.init_params(T5(backbones.backbone_config("small")), jax.random.PRNGKey(0))
  ocp.PyTreeCheckpointer().save(os.path.join(path, "checkpoint_0"),
                                {"target": jax.device_get(params)})
  return path


async def load_lengths(url: str, mode: str, jobs: list[tuple[str, str, int]], clients: int,
                       requests: int, seconds: float) -> dict:
  """Closed loop over (prompt, input, n) jobs in one of LENGTH_MODES."""
  import aiohttp
  import openai
  latencies, ttfts, responses, errors, tokens = [], [], [], 0, 0
  next_job = 0
  stop_at = time.monotonic() + seconds
  connector = aiohttp.TCPConnector(limit=clients)
  timeout = aiohttp.ClientTimeout(total=300)
  client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                              timeout=300)
  async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
    async def one(prompt, text, n):
      """(status ok, text, tokens, time to first token or None)."""
      t0 = time.monotonic()
      if mode == "whole_loop":
        async with session.post("/v1/generate", json={
            "prompt": prompt, "inputs": [text],
            "decoding": {"max_decode_length": LENGTHS[1]}}) as r:
          body = await r.json()
        if r.status != 200:
          return False, None, 0, None
        return True, (body["outputs"][0]["text"], None), n, None
      first, parts, finish, count = None, [], None, 0
      if mode == "continuous_unstreamed":
        async with session.post("/v1/completions", json={
            "model": prompt, "prompt": text, "max_tokens": n, "temperature": 0}) as r:
          body = await r.json()
        if r.status != 200:
          return False, None, 0, None
        choice = body["choices"][0]
        return True, (choice["text"], choice["finish_reason"]), body["usage"][
            "completion_tokens"], None
      if mode == "continuous":
        async with session.post("/v1/completions", json={
            "model": prompt, "prompt": text, "max_tokens": n, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}) as r:
          if r.status != 200:
            return False, None, 0, None
          async for line in r.content:
            if not line.startswith(b"data: {"):
              continue
            chunk = json.loads(line[6:])
            first = first or time.monotonic()
            for c in chunk["choices"]:
              parts.append(c["text"])
              finish = c["finish_reason"] or finish
            if chunk.get("usage"):
              count = chunk["usage"]["completion_tokens"]
      else:
        stream = await client.completions.create(
            model=prompt, prompt=text, max_tokens=n, temperature=0, stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
          first = first or time.monotonic()
          for c in chunk.choices:
            parts.append(c.text)
            finish = c.finish_reason or finish
          if chunk.usage:
            count = chunk.usage.completion_tokens
      return True, ("".join(parts), finish), count, first - t0 if first else None

    async def worker():
      nonlocal next_job, errors, tokens
      while next_job < requests and time.monotonic() < stop_at:
        prompt, text, n = jobs[next_job % len(jobs)]
        next_job += 1
        t0 = time.monotonic()
        try:
          ok, out, count, ttft = await one(prompt, text, n)
        except Exception:  # pylint: disable=broad-except
          ok, out, count, ttft = False, None, 0, None
        latencies.append(time.monotonic() - t0)
        if not ok:
          errors += 1
          continue
        tokens += count
        if ttft is not None:
          ttfts.append(ttft)
        responses.append((prompt, text, n, out))
    start = time.monotonic()
    await asyncio.gather(*[worker() for _ in range(clients)])
    wall = time.monotonic() - start
  await client.close()
  lat = np.asarray(latencies)
  return dict(requests=len(latencies), errors=errors, seconds=wall, rps=len(latencies) / wall,
              tokens_per_s=tokens / wall, p50_ms=1000 * float(np.percentile(lat, 50)),
              p99_ms=1000 * float(np.percentile(lat, 99)),
              ttft_p50_ms=1000 * float(np.median(ttfts)) if ttfts else None,
              ttft_p99_ms=1000 * float(np.percentile(ttfts, 99)) if ttfts else None,
              responses=responses)


def check_lengths(responses, refs) -> int:
  """Mismatches against the requests sent alone (see the module docstring)."""
  bad = 0
  for prompt, text, _, (got, finish) in responses:
    want = refs[(prompt, text)]
    if finish is None:  # whole loop
      bad += got != want
    else:
      bad += not want.startswith(got) or (finish == "stop" and got != want)
  return bad


def _summary(runs: list, modes: tuple, keys: tuple) -> dict:
  """{clients: {mode: each key's median over that mode's runs}} (None where unmeasured)."""
  def medians(mode, clients):
    mine = [r for r in runs if r["mode"] == mode and r["clients"] == clients]
    return {k: (float(np.median([r[k] for r in mine])) if mine[0][k] is not None else None)
            for k in keys}
  return {str(c): {mode: medians(mode, c) for mode in modes} for c in CONCURRENCY}


def main_lengths(args, info: dict) -> None:
  """The `lengths` workload (module docstring)."""
  import httpx
  work = tempfile.mkdtemp(prefix="serving_bench_")
  path = random_backbone(work) if args.random_backbone else (args.backbone or backbone())
  prompt_dir = os.path.join(work, "prompts")
  os.makedirs(prompt_dir)
  prompts = make_prompts(path, prompt_dir)
  names = sorted(prompts)
  rng = np.random.RandomState(0)
  words = sorted({"".join(rng.choice(list("abcdefgh"), rng.randint(3, 13)))
                  for _ in range(NUM_INPUTS)})
  jobs = [(names[i % NUM_PROMPTS], words[(i * 7) % len(words)],
           int(rng.randint(LENGTHS[0], LENGTHS[1] + 1))) for i in range(4096)]
  t0 = time.time()
  proc, url = start_server(path, prompt_dir, LENGTH_FLAGS, os.path.join(work, "lengths.log"))
  wait_ready(proc, url)
  print(f"server up in {time.time() - t0:.0f} s", flush=True)
  runs, mismatches = [], 0
  try:
    refs = {}
    for prompt, text, _ in jobs[:NUM_INPUTS * 2]:
      if (prompt, text) not in refs:
        refs[(prompt, text)] = httpx.post(url + "/v1/generate", timeout=300, json={
            "prompt": prompt, "inputs": [text],
            "decoding": {"max_decode_length": LENGTHS[1]}}).json()["outputs"][0]["text"]
    jobs = [j for j in jobs if (j[0], j[1]) in refs]
    for mode in LENGTH_MODES:  # One untimed pass each: compiles, caches, connections.
      asyncio.run(load_lengths(url, mode, jobs, 16, 32, SECONDS))
    for rnd in range(ROUNDS):
      for clients in CONCURRENCY:
        order = list(LENGTH_MODES) if (rnd + clients) % 2 == 0 else list(LENGTH_MODES)[::-1]
        for mode in order:
          before = batch_stats(url)
          result = asyncio.run(load_lengths(url, mode, jobs[rnd * 997:], clients, REQUESTS,
                                            SECONDS))
          after = batch_stats(url)
          bad = check_lengths(result.pop("responses"), refs)
          mismatches += bad
          # The continuous batcher's decoding calls (decode_steps steps each): their
          # mean time, and the share of the run they took (the rest: admission, HTTP).
          delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
          calls = delta.get("pt_serve_decode_step_seconds_count", 0.0)
          busy = delta.get("pt_serve_decode_step_seconds_sum", 0.0)
          result.update(mode=mode, clients=clients, round=rnd, mismatches=bad,
                        decode_call_ms=1000 * busy / calls if calls else None,
                        decode_busy=busy / result["seconds"] if calls else None)
          runs.append(result)
          ttft = (f"TTFT p50 {result['ttft_p50_ms']:6.1f} ms" if result["ttft_p50_ms"]
                  else "")
          print(f"round {rnd} {mode:17s} C={clients:2d}: {result['rps']:6.1f} req/s "
                f"{result['tokens_per_s']:7.0f} tok/s  p50 {result['p50_ms']:7.1f} ms  "
                f"p99 {result['p99_ms']:7.1f} ms  {ttft}  "
                + (f"call {result['decode_call_ms']:.1f} ms busy {result['decode_busy']:.0%} "
                   if result["decode_call_ms"] else "")
                + f"({result['requests']} req, "
                f"{result['errors']} errors, {bad} mismatches)", flush=True)
  finally:
    proc.terminate()
    code = proc.wait(120)
  info["load_average_at_end"] = os.getloadavg()
  summary = _summary(runs, LENGTH_MODES, ("rps", "tokens_per_s", "p50_ms", "p99_ms",
                                          "ttft_p50_ms", "ttft_p99_ms", "decode_call_ms",
                                          "decode_busy"))
  for row in summary.values():
    row["throughput_ratio"] = row["continuous"]["rps"] / row["whole_loop"]["rps"]
    row["throughput_ratio_unstreamed"] = (row["continuous_unstreamed"]["rps"]
                                          / row["whole_loop"]["rps"])
  result = dict(machine=info, workload="lengths", backbone=path,
                random_backbone=args.random_backbone, prompts=NUM_PROMPTS,
                prompt_length=PROMPT_LENGTH, lengths=LENGTHS, rounds=ROUNDS,
                max_requests_per_run=REQUESTS, max_seconds_per_run=SECONDS,
                server_flags=LENGTH_FLAGS, summary=summary, mismatches=mismatches,
                responses_checked=sum(r["requests"] - r["errors"] for r in runs),
                server_exit_code=code, runs=runs)
  if not args.no_write:
    os.makedirs(os.path.dirname(report.path("serving_lengths", args.machine)), exist_ok=True)
    report.write("serving_lengths", result, args.machine)
  print(json.dumps(summary, indent=1))
  print(f"checked {result['responses_checked']} responses: {mismatches} mismatches; "
        f"server exit code {code}")


def main():
  import argparse
  global ROUNDS, REQUESTS, SECONDS, CONCURRENCY
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--backbone", default=None, help="a T5X checkpoint of the small "
                      "quickstart shape (default: the cached quickstart backbone)")
  parser.add_argument("--rounds", type=int, default=ROUNDS)
  parser.add_argument("--requests", type=int, default=REQUESTS)
  parser.add_argument("--seconds", type=float, default=SECONDS)
  parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
  parser.add_argument("--no_write", action="store_true", help="print only (smoke runs)")
  report.add_machine_flag(parser)
  parser.add_argument("--workload", choices=("cross_task", "lengths"), default="cross_task")
  parser.add_argument("--random_backbone", action="store_true",
                      help="lengths workload: a random backbone of the small shape")
  args = parser.parse_args()
  ROUNDS, REQUESTS, SECONDS = args.rounds, args.requests, args.seconds
  CONCURRENCY = tuple(int(c) for c in args.concurrency.split(","))
  info = machine.cpu_info()
  info["load_average_at_start"] = os.getloadavg()
  print("CPU:", machine.describe(info), flush=True)
  if args.workload == "lengths":
    return main_lengths(args, info)
  work = tempfile.mkdtemp(prefix="serving_bench_")
  path = args.backbone or backbone()
  prompt_dir = os.path.join(work, "prompts")
  os.makedirs(prompt_dir)
  prompts = make_prompts(path, prompt_dir)
  t0 = time.time()
  refs = infer_references(path, prompts, work)
  print(f"infer references: {len(refs)} (prompt, input) pairs in {time.time() - t0:.0f} s",
        flush=True)
  names = sorted(prompts)
  inputs = sorted({text for _, text in refs})
  # Round-robin prompts, inputs cycling independently: every request mixes tasks.
  jobs = [(names[i % NUM_PROMPTS], inputs[(i * 7) % len(inputs)]) for i in range(4096)]

  servers = {}
  for mode, flags in MODES.items():
    t0 = time.time()
    proc, url = start_server(path, prompt_dir, flags, os.path.join(work, f"{mode}.log"))
    wait_ready(proc, url)
    servers[mode] = (proc, url)
    print(f"{mode} server up in {time.time() - t0:.0f} s (warm-up compiles included)",
          flush=True)

  runs = []
  mismatches, worst = 0, 0.0
  try:
    for mode, (_, url) in servers.items():  # One untimed pass each: caches, connections.
      asyncio.run(load(url, jobs, 8, 64, SECONDS))
    for rnd in range(ROUNDS):
      for clients in CONCURRENCY:
        order = list(MODES) if (rnd + clients) % 2 == 0 else list(MODES)[::-1]
        for mode in order:
          url = servers[mode][1]
          before = batch_stats(url)
          result = asyncio.run(load(url, jobs[rnd * 997:], clients, REQUESTS, SECONDS))
          after = batch_stats(url)
          bad, diff = check(result.pop("responses"), refs)
          mismatches += bad
          worst = max(worst, diff)
          batches = after["pt_serve_batch_rows_count"] - before["pt_serve_batch_rows_count"]
          result.update(
              mode=mode, clients=clients, round=rnd, mismatches=bad,
              mean_batch_rows=(after["pt_serve_batch_rows_sum"]
                               - before["pt_serve_batch_rows_sum"]) / max(batches, 1),
              mean_batch_prompts=(after["pt_serve_batch_prompts_sum"]
                                  - before["pt_serve_batch_prompts_sum"]) / max(batches, 1),
              mean_batch_ms=1000 * (after["pt_serve_batch_seconds_sum"]
                                    - before["pt_serve_batch_seconds_sum"]) / max(batches, 1),
              device_busy=(after["pt_serve_batch_seconds_sum"]
                           - before["pt_serve_batch_seconds_sum"]) / result["seconds"],
              mean_queue_wait_ms=1000 * (
                  after["pt_serve_queue_wait_seconds_sum"]
                  - before["pt_serve_queue_wait_seconds_sum"]) / max(
                      after["pt_serve_queue_wait_seconds_count"]
                      - before["pt_serve_queue_wait_seconds_count"], 1))
          runs.append(result)
          print(f"round {rnd} {mode:9s} C={clients:2d}: {result['rps']:7.1f} req/s  "
                f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                f"batch {result['mean_batch_rows']:4.1f} rows / "
                f"{result['mean_batch_prompts']:3.1f} prompts  "
                f"({result['requests']} req, {result['errors']} errors, {bad} mismatches)",
                flush=True)
  finally:
    for proc, _ in servers.values():
      proc.terminate()
    codes = {mode: proc.wait(60) for mode, (proc, _) in servers.items()}

  info["load_average_at_end"] = os.getloadavg()
  summary = _summary(runs, MODES, ("rps", "p50_ms", "p99_ms", "mean_batch_rows",
                                   "mean_batch_prompts", "mean_batch_ms", "device_busy",
                                   "mean_queue_wait_ms"))
  for clients in CONCURRENCY:
    row = summary[str(clients)]
    ratios = [b["rps"] / u["rps"] for b, u in zip(
        [r for r in runs if r["mode"] == "batched" and r["clients"] == clients],
        [r for r in runs if r["mode"] == "unbatched" and r["clients"] == clients])]
    row["throughput_ratio"] = float(np.median(ratios))
    row["p99_budget_ms"] = 2 * row["unbatched"]["p50_ms"] + MAX_WAIT_MS
    row["p99_within_budget"] = row["batched"]["p99_ms"] < row["p99_budget_ms"]
  result = dict(
      machine=info, backbone=path, prompts=NUM_PROMPTS, prompt_length=PROMPT_LENGTH,
      decode_length=DECODE, rounds=ROUNDS, max_requests_per_run=REQUESTS,
      max_seconds_per_run=SECONDS, max_wait_ms=MAX_WAIT_MS, summary=summary,
      responses_checked=sum(r["requests"] - r["errors"] for r in runs),
      mismatches_vs_infer=mismatches, max_score_diff_vs_infer=worst,
      server_exit_codes=codes, runs=runs)
  if not args.no_write:
    report.write("serving", result, args.machine)
  print(json.dumps(summary, indent=1))
  print(f"checked {result['responses_checked']} responses against infer: {mismatches} "
        f"mismatches, max score diff {worst:.2e}; server exit codes {codes}")


if __name__ == "__main__":
  main()
