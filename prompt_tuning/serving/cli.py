"""`prompt-tuning serve`: flags, start-up (load), then uvicorn until SIGTERM.

  prompt-tuning serve CHECKPOINT --prompt rte=/p/rte.npy [--prompt NAME=PATH ...]
      [--prompt_dir DIR] [--vocabulary byte|SPM.model] [--port 8000] ...

The port opens as soon as the backbone and prompts are loaded: the programs
compile on a background thread (the first requests' programs first; /healthz
says ready once they are), through JAX's persistent compilation cache, so a
restart reads them back instead of compiling again.

uvicorn drains on SIGTERM/SIGINT: it stops accepting connections, lets
in-flight requests finish (their batches run, their streams end), then the
app's shutdown stops the batchers and the process exits 0.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
from typing import Optional


def _sizes(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
  return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The serve flags, on a (sub)parser."""
  parser.add_argument("checkpoint", help="the frozen backbone: a T5X checkpoint (folder or "
                      "model dir) or a Hugging Face folder")
  parser.add_argument("--prompt", action="append", default=[], metavar="NAME=PATH",
                      help="a [P, H] .npy prompt or a PEFT prompt-tuning adapter folder to "
                           "serve under NAME (repeatable)")
  parser.add_argument("--prompt_dir", default=None,
                      help="serve every NAME.npy (and NAME/ PEFT adapter folder) in this "
                           "folder as NAME")
  parser.add_argument("--allow_backbone_mismatch", action="store_true",
                      help="serve prompts whose provenance names another backbone")
  parser.add_argument("--prompt_length", type=int, default=None,
                      help="P when no prompt is loaded at start-up (prompts come by PUT)")
  parser.add_argument("--vocabulary", default=None,
                      help="'byte' or a SentencePiece .model file (default: the one recorded "
                      "with the checkpoint, such as a Hugging Face folder's spiece.model; "
                      "else 'byte'); contradicting the recorded one is an error")
  parser.add_argument("--relative_attention_max_distance", type=int, default=None,
                      help="only for a T5X checkpoint that records no config (default "
                      "128); a recorded value is read, and contradicting it is an error")
  g = parser.add_argument_group("network and limits")
  g.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
  g.add_argument("--port", type=int, default=8000)
  g.add_argument("--max_batch_size", type=int, default=None,
                 help="rows per forward pass (default: the largest batch bucket)")
  g.add_argument("--batch_buckets", type=_sizes, default=(1, 2, 4, 8, 16, 32))
  g.add_argument("--length_buckets", type=_sizes, default=(16, 32, 64, 128),
                 help="input lengths compiled; the largest is the input budget")
  g.add_argument("--target_buckets", type=_sizes, default=(8, 16, 32),
                 help="candidate lengths compiled for /v1/score")
  g.add_argument("--max_wait_ms", type=float, default=5.0,
                 help="how long a request may wait for others to join its batch")
  g.add_argument("--max_queue_rows", type=int, default=1024)
  g.add_argument("--max_inputs", type=int, default=32, help="inputs per request")
  g.add_argument("--max_candidates", type=int, default=32)
  g.add_argument("--max_decode_length", type=int, default=128)
  g.add_argument("--default_decode_length", type=int, default=32)
  g.add_argument("--max_beams", type=int, default=8)
  g.add_argument("--max_prompts", type=int, default=64, help="prompt bank capacity")
  g.add_argument("--allow_oversubscribe", action="store_true",
                 help="start even when the largest batch's estimated memory exceeds what is "
                      "available (refused by default, before the backbone is read)")
  g.add_argument("--decode_rows", type=int, default=16,
                 help="rows decoded at once by the continuous batcher (/v1/completions)")
  g.add_argument("--decode_steps", type=int, default=8,
                 help="decoding steps per device call of the continuous batcher (requests "
                      "join and leave between calls)")
  g.add_argument("--backbone_name", default=None,
                 help="the `model` naming the backbone without a prompt on the OpenAI-"
                      "compatible routes (default: the checkpoint folder's name)")
  g.add_argument("--no_warmup", action="store_true",
                 help="compile on first use instead of in the background from start-up")
  g.add_argument("--compilation_cache_dir",
                 default=os.path.join(os.path.expanduser("~"), ".cache", "prompt-tuning", "xla"),
                 help="JAX's persistent compilation cache ('' turns it off)")
  g.add_argument("--log_level", default="INFO")


def prompt_files(pairs: list[str], folder: Optional[str]) -> dict[str, str]:
  """{name: path} from NAME=PATH flags and a folder of NAME.npy files (or adapter folders)."""
  from prompt_tuning.readers import peft
  out: dict[str, str] = {}
  if folder:
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"--prompt_dir {folder} is not a folder")
    for path in sorted(glob.glob(os.path.join(folder, "*.npy"))):
      out[os.path.splitext(os.path.basename(path))[0]] = path
    for path in sorted(glob.glob(os.path.join(folder, "*", peft.CONFIG_FILE))):
      out[os.path.basename(os.path.dirname(path))] = os.path.dirname(path)
  for pair in pairs:
    name, sep, path = pair.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"--prompt {pair!r}: expected NAME=PATH")
    out[name] = path
  return out


def backbone_name(checkpoint: str) -> str:
  """The checkpoint's folder name (its parent's, for a T5X `checkpoint_N` step folder)."""
  path = os.path.normpath(os.path.abspath(checkpoint))
  name = os.path.basename(path)
  if name.startswith("checkpoint_") and name[len("checkpoint_"):].isdigit():
    name = os.path.basename(os.path.dirname(path))
  return name


def vocabulary_spec(checkpoint: str, given: Optional[str], flag: str = "--vocabulary") -> str:
  """`flag`'s value, else the vocabulary recorded with the checkpoint, else 'byte'; checked.

  A given vocabulary that contradicts the recorded one is an error naming both;
  one that cannot be read is one line naming `flag`.
  """
  from prompt_tuning.readers import vocabulary as vocabulary_lib
  found = None
  if os.path.exists(checkpoint):  # A missing checkpoint: the preflight names it.
    try:
      found = vocabulary_lib.recorded(checkpoint)
    except (OSError, ValueError):
      found = None
  if given is None:
    if found is None:
      return "byte"  # Nothing recorded: the quickstart backbones' vocabulary, as before.
    if found.kind == vocabulary_lib.BYTE:
      return vocabulary_lib.BYTE
    spec = found.path
    if not spec or not os.path.isfile(spec):
      raise FileNotFoundError(f"{found.source} records the vocabulary {found.describe()}, which "
                              f"is not a local file: give {flag} /local/spm.model")
    return spec
  if given != vocabulary_lib.BYTE and not os.path.isfile(given):
    raise FileNotFoundError(f"{flag} {given}: expected 'byte' or a SentencePiece .model file")
  mine = vocabulary_lib.Vocabulary(given if given == vocabulary_lib.BYTE
                                   else vocabulary_lib.SENTENCEPIECE,
                                   None if given == vocabulary_lib.BYTE else given)
  if found is not None and not vocabulary_lib.same(mine, found):
    raise ValueError(f"{flag} {given} but {found.source} records the vocabulary "
                     f"{found.describe()}: drop {flag} (the recorded one is used)")
  return given


def build(args, warmup: bool = True
          ) -> tuple["engine_lib.Engine", "server_lib.ServeConfig"]:  # noqa: F821
  """Loads the backbone and prompts and (with `warmup`, unless --no_warmup) compiles the
  whole-loop programs; returns (engine, config)."""
  from prompt_tuning import decoding
  from prompt_tuning.prompts import provenance
  from prompt_tuning.runtime import preflight
  from prompt_tuning.serving import engine as engine_lib
  from prompt_tuning.serving import server as server_lib
  args.vocabulary = vocabulary_spec(args.checkpoint, args.vocabulary)  # Before any reading.
  files = prompt_files(args.prompt, args.prompt_dir)
  prompts = {name: provenance.read_prompt(path) for name, path in files.items()}
  if len(prompts) > args.max_prompts:
    raise ValueError(f"{len(prompts)} prompts given but --max_prompts={args.max_prompts}")
  backbone_model = args.backbone_name or backbone_name(args.checkpoint)
  if backbone_model in prompts:
    raise ValueError(f"A prompt is named {backbone_model!r}, the backbone's own name on the "
                     "OpenAI-compatible routes; rename it or pass --backbone_name")
  shapes = {name: p.shape for name, p in prompts.items()}
  if len(set(shapes.values())) > 1:
    raise ValueError(f"Prompts served together must share one [P, H] shape; got {shapes}")
  if prompts:
    length = next(iter(prompts.values())).shape[0]
    if args.prompt_length and args.prompt_length != length:
      raise ValueError(f"--prompt_length={args.prompt_length} but the prompts have "
                       f"length {length}")
  elif args.prompt_length:
    length = args.prompt_length
  else:
    raise ValueError("Give prompts (--prompt NAME=PATH or --prompt_dir) or --prompt_length")
  batch_buckets = tuple(sorted(args.batch_buckets))
  if args.max_batch_size:
    batch_buckets = tuple(b for b in batch_buckets if b < args.max_batch_size) + (
        args.max_batch_size,)
  preflight.check_serve(  # The backbone's files and the largest batch's memory, before reading.
      checkpoint=args.checkpoint, prompt_length=length, capacity=args.max_prompts,
      batch_size=max(batch_buckets), input_length=max(args.length_buckets),
      decode_length=args.max_decode_length, beams=args.max_beams,
      target_length=max(args.target_buckets),
      relative_attention_max_distance=args.relative_attention_max_distance,
      allow_oversubscribe=args.allow_oversubscribe)
  model_config, params = engine_lib.load_backbone(args.checkpoint,
                                                  args.relative_attention_max_distance)
  backbone = provenance.params_fingerprint(model_config, params)  # The table just read.
  for name, path in files.items():
    provenance.check(path, prompts[name], backbone, args.checkpoint,
                     args.allow_backbone_mismatch)
  engine = engine_lib.Engine(
      model_config, params, length, engine_lib.load_vocabulary(args.vocabulary),
      engine_lib.EngineConfig(capacity=args.max_prompts, batch_buckets=batch_buckets,
                              length_buckets=args.length_buckets,
                              target_buckets=args.target_buckets))
  for name, value in prompts.items():
    engine.prompts.put(name, value)
  config = server_lib.ServeConfig(
      host=args.host, port=args.port, max_wait_ms=args.max_wait_ms,
      max_queue_rows=max(args.max_queue_rows, engine.config.max_batch),
      max_inputs=args.max_inputs, max_candidates=args.max_candidates,
      max_decode_length=args.max_decode_length,
      default_decode_length=args.default_decode_length, max_beams=args.max_beams,
      backbone_name=backbone_model, decode_rows=args.decode_rows,
      decode_steps=args.decode_steps)
  if warmup and not args.no_warmup:
    engine.warmup([decoding.DecodingConfig(max_decode_length=config.default_decode_length)])
  return engine, config


def run(args) -> int:
  """Loads, serves (compiling in the background) until SIGTERM/SIGINT; returns the exit code."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import logging
  import time
  import jax
  import uvicorn
  from prompt_tuning.serving import server as server_lib
  server_lib.configure_logging(args.log_level)
  log = logging.getLogger("prompt_tuning.serving")
  if args.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache_dir)
    # Every program, however quick to compile: start-up compiles many.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  start = time.monotonic()
  engine, config = build(args, warmup=False)
  log.info("loaded", extra={"fields": dict(
      event="loaded", startup_s=round(time.monotonic() - start, 1),
      prompts=engine.prompts.names(), host=config.host, port=config.port)})
  app = server_lib.create_app(engine, config, warmup=not args.no_warmup)
  # The decode thread needs the GIL back at once after each step, while the
  # event loop streams tokens: Python's default 5 ms switch interval would
  # idle the device for up to that long per step.
  sys.setswitchinterval(float(os.environ.get("PT_SERVE_SWITCH_INTERVAL_S", "0.0005")))
  # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler
  # that was there before it started. That handler is this no-op, so a drained
  # shutdown exits 0 (what process managers read as a clean stop), not -15.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)
  # access_log off: the app writes one structured line per request itself.
  uvicorn.run(app, host=config.host, port=config.port, log_config=None, access_log=False,
              timeout_graceful_shutdown=None)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="prompt-tuning serve", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  args = parser.parse_args(argv)
  try:
    return run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"prompt-tuning serve: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
