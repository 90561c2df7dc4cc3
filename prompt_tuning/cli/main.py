"""The `prompt-tuning` command.

  prompt-tuning train --gin_file=F [--gin_file=...] [--gin.NAME=VALUE ...]
  prompt-tuning eval  --gin_file=F ...
  prompt-tuning infer --gin_file=F ...
  prompt-tuning precompile --gin_file=F ... [--virtual_devices=64]
  prompt-tuning quickstart [--cache_dir=D]
  prompt-tuning recycle --source_checkpoint=A --target_checkpoint=B --prompt=p.npy --out=q.npy
  prompt-tuning inspect CHECKPOINT
  prompt-tuning tasks list [REGEX] | tasks show NAME [--split=S] [--num_examples=N]
  prompt-tuning decode CHECKPOINT [--spm_model=M] --input="text" [--method=beam]
  prompt-tuning serve CHECKPOINT --prompt NAME=p.npy [--prompt_dir=D] [--port=8000]
  prompt-tuning export-peft --prompt=p.npy --checkpoint=BACKBONE --out=ADAPTER_DIR
  prompt-tuning import-peft --adapter=ADAPTER_DIR --checkpoint=BACKBONE --out=p.npy
  prompt-tuning spot rank --library DIR --probe probe.npy | spot add --library DIR ...

train / eval / infer / precompile take T5X's flags: gin files (bundled configs
are found from any directory), `--gin.MACRO=VALUE` bindings with gin literals
(`--gin.MODEL_DIR="'/tmp/run'"`), and `--gin_search_paths=a,b`;
`prompt-tuning SUB --help` prints what each expects. Nothing heavy (JAX,
TensorFlow) is imported until a command runs. Multi-host:
`--jax_distributed` (JAX's own cluster detection) or `--coordinator_address=
host:port --num_processes=N --process_id=i`. `--virtual_devices=N` gives N
CPU devices (for precompile or tests).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional, Sequence


def _load_model(path: str, max_distance: Optional[int]):
  from prompt_tuning import readers
  from prompt_tuning.models.t5 import T5
  model = T5(readers.config_for(path, max_distance))
  return readers.open_checkpoint(path), model, readers.load_params(path, model)


def _inspect(args) -> int:
  from prompt_tuning.models import params as params_lib
  from prompt_tuning import trees as tree_lib
  ckpt, model, params = _load_model(args.checkpoint, args.relative_attention_max_distance)
  print(f"checkpoint: {getattr(ckpt, 'dir', args.checkpoint)}")
  print(f"format:     {getattr(ckpt, 'format', 'huggingface')}  step: {getattr(ckpt, 'step', '-')}")
  print(f"config:     {model.config}")
  for name, value in sorted(tree_lib.flatten(params).items()):
    print(f"  {name:60s} {str(tuple(value.shape)):18s} {value.dtype}")
  print(f"parameters: {params_lib.param_count(params):,}")
  return 0


def _decode(args) -> int:
  import jax.numpy as jnp
  import numpy as np
  import sentencepiece as spm
  from prompt_tuning import decoding
  from prompt_tuning.readers import vocabulary as vocabulary_lib
  from prompt_tuning.serving import cli as serving_cli
  if args.spm_model is None and os.path.exists(args.checkpoint) and (
      vocabulary_lib.recorded(args.checkpoint) is None):
    raise ValueError(f"{args.checkpoint} records no vocabulary: give --spm_model")
  # The checkpoint's recorded vocabulary unless given (a contradicting one is an error).
  spm_model = serving_cli.vocabulary_spec(args.checkpoint, args.spm_model, "--spm_model")
  if spm_model == "byte":
    raise ValueError(f"{args.checkpoint} uses the byte vocabulary; decode reads SentencePiece "
                     "models only (use `prompt-tuning serve`)")
  _, model, params = _load_model(args.checkpoint, args.relative_attention_max_distance)
  sp = spm.SentencePieceProcessor(model_file=spm_model)
  ids = sp.encode(args.input) + [1]
  config = decoding.DecodingConfig(method=args.method, max_decode_length=args.max_decode_length,
                                   num_beams=args.num_beams, temperature=args.temperature)
  import jax
  tokens, score = decoding.generate(model, params, jnp.asarray([ids]), config,
                                    rng=jax.random.PRNGKey(args.seed))
  out = [int(t) for t in np.asarray(tokens[0])]
  out = out[:out.index(1)] if 1 in out else out
  out = [t for t in out if t < sp.get_piece_size()]  # sentinel/extra ids have no text
  print(f"input ids:  {ids}")
  print(f"output ids: {out}")
  print(f"output:     {sp.decode(out)!r}  (score {float(score[0]):.3f})")
  return 0


def _quickstart(args) -> int:
  import logging
  from prompt_tuning.cli import environment
  environment.configure()  # XLA CPU defaults, quiet TF/CUDA logs, compilation cache
  logging.basicConfig(level=logging.WARNING)
  from prompt_tuning import backbones, quickstart
  pretrain = backbones.quickstart_pretrain_config(args.size, args.seed, args.pretrain_steps)
  prompt = quickstart.PromptConfig(steps=args.prompt_steps, length=args.prompt_length,
                                   dtype=args.dtype)
  try:
    quickstart.run(cache_dir=args.cache_dir, pretrain_cfg=pretrain, prompt_cfg=prompt,
                   eval_examples=args.eval_examples, work_dir=args.work_dir)
  except backbones.Interrupted as e:  # SIGTERM: saved; the next run resumes.
    print(e, file=sys.stderr)
  return 0


def run_gin_binary(command: str, argv: Sequence[str]) -> int:
  """`prompt-tuning <train|eval|infer|precompile> ...`: parses its flags and runs it."""
  return main([command, *argv])


def _run_gin(args: argparse.Namespace, bindings: list[str]) -> int:
  """Parses gin files and bindings, then calls the configured train / evaluate / ..."""
  from prompt_tuning.cli import environment, logging_setup, strict
  environment.configure()  # XLA CPU defaults, quiet TF/CUDA noise, compilation cache
  logging_setup.configure(args.verbose)  # Dependencies at WARNING unless --verbose.
  _start_jax(args)
  from prompt_tuning.cli import gin as gin_utils
  import prompt_tuning.tasks  # noqa: F401  (registers the bundled seqio tasks)
  try:
    saved_files, saved_bindings = _saved_run_config(args, bindings)
  except FileNotFoundError as e:
    return _error(args.command, e)
  if not args.gin_file and not saved_files:
    print(f"prompt-tuning {args.command}: error: give at least one --gin_file "
          f"(e.g. --gin_file={_RUN_FILES[args.command]}) or a MODEL_DIR holding the "
          "config.gin of its training run; see --help", file=sys.stderr)
    return 2
  # With a saved config: it, then the binary's run file (its split and specs), then the
  # files given, which override both.
  run_file = [_RUN_FILES[args.command]] if saved_files else []
  gin_files = [*saved_files, *run_file,
               *[f for f in args.gin_file if f not in run_file]]
  try:
    allow_unused, bindings = strict.pop_allow_unused(bindings)
    gin_utils.parse_gin(gin_files, [*saved_bindings, *bindings], args.gin_search_paths)
    gin_utils.bind_file_task()  # tasks/local_file.gin before or after the runs/ file.
    gin_utils.bind_checkpoint_config()  # No models/ file: the checkpoint's own config.
    gin_utils.bind_checkpoint_vocabulary()  # And its own vocabulary, where recorded.
    strict.check_bindings(_GIN_BINARIES[args.command], args.gin_file, bindings,
                          args.gin_search_paths, allow_unused,
                          gin_utils.configs_dir())  # Typos fail before any work.
    gin_utils.apply_task_vocabulary()
    result = gin_utils.run_configured(_GIN_BINARIES[args.command])
    if args.command == "train":  # The run's configuration, saved with the run (T5X's habit).
      from prompt_tuning.cli import saved_config
      import gin
      saved_config.write(gin.query_parameter("%MODEL_DIR"), _argv_of(args))
  except (OSError, ValueError, KeyError, FloatingPointError) as e:  # OSError: full disk, lock
    return _error(args.command, e)
  if args.command == "precompile":
    import json
    print(json.dumps(result, indent=1))
  else:
    print(_readable(args.command, result))
  return 0


def _readable(command: str, result) -> str:
  """A binary's result as 'name: value' lines (train's JSON is MODEL_DIR/train_summary.json)."""
  if not isinstance(result, dict):
    return str(result)
  if command == "train" and result.get("start_step") is not None and (
      result.get("step") == result["start_step"] and "preempted_at_step" not in result):
    import gin
    steps = gin.query_parameter("train.train_steps")
    steps = gin.query_parameter("%TRAIN_STEPS") if not isinstance(steps, int) else steps
    if isinstance(steps, int) and result["step"] >= steps:
      return (f"nothing to do: finished at step {result['step']} (TRAIN_STEPS={steps}); "
              "raise TRAIN_STEPS to train on, or use another MODEL_DIR")

  def lines(prefix: str, value) -> list[str]:
    if isinstance(value, dict):
      return [line for k, v in value.items() for line in lines(f"{prefix}{k}.", v)]
    if isinstance(value, float):
      value = f"{value:.6g}"
    return [f"{prefix[:-1]}: {value}"]

  return "\n".join(lines("", result))


def _argv_of(args: argparse.Namespace) -> list[str]:
  return list(getattr(args, "argv", []))


def _saved_run_config(args: argparse.Namespace, bindings: list[str]
                      ) -> tuple[list[str], list[str]]:
  """eval / infer on a MODEL_DIR whose training saved config.gin: (files, bindings) it adds.

  MODEL_DIR comes from the positional argument (bound as the macro) or
  --gin.MODEL_DIR. Prints which command-line bindings override saved values.
  """
  import ast
  from prompt_tuning.cli import saved_config
  if args.command not in ("eval", "infer"):
    return [], []
  model_dir = getattr(args, "model_dir", None)
  if args.gin_file and not model_dir:  # --gin_file and --gin.MODEL_DIR: as before, the files.
    return [], []
  if model_dir:
    bindings.append(f"MODEL_DIR = {model_dir!r}")
  else:
    for binding in bindings:
      name, _, value = binding.partition("=")
      if name.strip() == "MODEL_DIR":
        try:
          model_dir = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
          return [], []
  if not isinstance(model_dir, str) or not os.path.isfile(saved_config.path(model_dir)):
    if getattr(args, "model_dir", None) and not args.gin_file:
      raise FileNotFoundError(f"{saved_config.path(model_dir)} not found: a MODEL_DIR alone "
                              "needs the config.gin its training run saved; give "
                              "--gin_file=... too")
    return [], []
  with open(saved_config.path(model_dir)) as f:
    text = f.read()
  changed = saved_config.overridden(text, [b for b in bindings if b.split("=")[0].strip()
                                           != "MODEL_DIR"])
  print(f"prompt-tuning {args.command}: using the configuration saved in "
        f"{saved_config.path(model_dir)}"
        + (f"; overridden on the command line: {', '.join(changed)}" if changed else ""),
        file=sys.stderr)
  return [saved_config.path(model_dir)], saved_config.macro_statements(text)


def _serve(args) -> int:
  from prompt_tuning.cli import saved_config
  from prompt_tuning.serving import cli as serving_cli
  if os.path.isfile(saved_config.path(args.checkpoint)):  # A trained MODEL_DIR: its run's
    # backbone, and its newest prompt under the task's name unless prompts are given.
    model_dir = args.checkpoint
    args.checkpoint, task, prompt = saved_config.resolve_run(model_dir)
    if not args.prompt and not args.prompt_dir:
      args.prompt = [f"{task}={prompt}"]
    print(f"prompt-tuning serve: from {saved_config.path(model_dir)}: backbone "
          f"{args.checkpoint}, prompts {args.prompt or args.prompt_dir}", file=sys.stderr)
  return serving_cli.run(args)


def _recycle(args) -> int:
  import os
  from prompt_tuning.prompts import provenance
  from prompt_tuning.recycling import methods
  if os.path.exists(args.out) and not args.overwrite:
    raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
  import numpy as np
  # Without a filter file: every id both tables share, after `skip`. Each
  # table is read once, by the recycler.
  take = args.take if args.filter_file else None
  support = dict(filter_file=args.filter_file, skip=args.skip, take=take)
  recycled = methods.recycle(args.prompt, args.source_checkpoint, args.target_checkpoint,
                             args.method, args.allow_backbone_mismatch, **support)
  tmp = args.out + ".tmp.npy"
  np.save(tmp, recycled, allow_pickle=False)
  os.replace(tmp, args.out)
  recycler = methods.recycler_for(args.source_checkpoint, args.target_checkpoint,
                                  args.method, **support)  # Cached: no second fit.
  if recycler.target_fingerprint:  # The source's metrics do not hold on the target.
    provenance.carry(args.prompt, args.out, recycler.target_fingerprint, recycled,
                     args.target_checkpoint, keep_metrics=False, recycled_from=dict(
                         prompt=os.path.abspath(args.prompt), method=args.method,
                         backbone=(provenance.read(args.prompt) or {}).get("backbone")))
  print(f"recycled {args.prompt} -> {args.out} with {args.method}: shape {recycled.shape}")
  return 0


def _tasks(args) -> int:
  import os
  import re
  from prompt_tuning.cli import environment
  environment.quiet_logs()
  environment.import_tensorflow_quietly()  # No oneDNN or CUDA start-up lines.
  import seqio
  import prompt_tuning.tasks  # noqa: F401  (registers the bundled seqio tasks)
  from prompt_tuning.tasks import vocabularies
  from prompt_tuning.runtime import data as data_lib
  if args.vocabulary:
    kind = args.vocabulary if args.vocabulary in vocabularies.KINDS else "sentencepiece"
    path = None if kind == args.vocabulary else args.vocabulary
    vocabularies.configure(kind=kind, path=path)
    vocabularies.current()  # A missing file is reported here.
  if args.action == "list":
    try:
      pattern = re.compile(args.name or ".*")
    except re.error as e:
      raise ValueError(f"Bad regular expression {args.name!r}: {e}") from e
    names = [("task", n) for n in seqio.TaskRegistry.names()]
    names += [("mixture", n) for n in seqio.MixtureRegistry.names()]
    shown = sorted((n, kind) for kind, n in names if pattern.search(n))
    for n, kind in shown:
      print(f"{n}{'  (mixture)' if kind == 'mixture' else ''}")
    print(f"{len(shown)} of {len(names)} registered", file=sys.stderr)
    return 0
  if not args.name:
    raise ValueError("tasks show needs a task or mixture NAME")
  task = data_lib.get_task_or_mixture(args.name)
  splits = list(task.splits)
  split = args.split or ("validation" if "validation" in splits else splits[0])
  if split not in splits:
    raise ValueError(f"{args.name} has no split {split!r}; it has {splits}")
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        try_in_mem_cache=False)
  print(f"{args.name}  split={split}  splits={splits}")
  for n, ex in enumerate(ds.take(args.num_examples).as_numpy_iterator()):
    print(f"--- example {n}")
    for key in sorted(ex):
      value = ex[key]
      if key in ("inputs", "targets"):
        print(f"  {key}_ids: {[int(i) for i in value]}")
      elif isinstance(value, bytes):
        print(f"  {key}: {value.decode('utf-8', 'replace')!r}")
      else:
        print(f"  {key}: {value!r}")
  return 0


# --- PEFT interop (issue 17): export-peft / import-peft -------------------------

def _export_peft(args) -> int:
  from prompt_tuning.cli import saved_config
  from prompt_tuning.interop import peft as peft_interop
  from prompt_tuning.readers import peft as peft_format
  if os.path.isfile(saved_config.path(args.prompt)):  # A trained MODEL_DIR: its newest prompt.
    backbone, _, args.prompt = saved_config.resolve_run(args.prompt)
    args.checkpoint = args.checkpoint or backbone  # A flag given overrides the saved one.
    print(f"prompt-tuning export-peft: prompt {args.prompt}, backbone {args.checkpoint}",
          file=sys.stderr)
  if not args.checkpoint:
    raise ValueError("export-peft needs --checkpoint (the backbone), or --prompt=MODEL_DIR "
                     "of a run that saved config.gin")
  config = peft_interop.export_peft(args.prompt, args.checkpoint, args.out,
                                    args.base_model_name_or_path,
                                    args.allow_backbone_mismatch, args.overwrite)
  print(f"exported {args.prompt} -> {args.out}: {peft_format.describe(config)}")
  return 0


def _import_peft(args) -> int:
  from prompt_tuning.interop import peft as peft_interop
  prompt = peft_interop.import_peft(args.adapter, args.checkpoint, args.out,
                                    args.allow_backbone_mismatch, args.overwrite)
  print(f"imported {args.adapter} -> {args.out}: shape {prompt.shape}")
  return 0


def _add_interop_commands(sub) -> None:
  ex = sub.add_parser("export-peft", help="write a prompt as a Hugging Face PEFT prompt-tuning "
                      "adapter folder", allow_abbrev=False)
  ex.add_argument("--prompt", required=True, help="the [P, H] .npy prompt, or a trained "
                  "MODEL_DIR (its newest prompt; its config.gin names the backbone)")
  ex.add_argument("--out", required=True, help="the adapter folder to write")
  ex.add_argument("--base_model_name_or_path", default=None, help="the HF model the adapter "
                  "is for, recorded in adapter_config.json (default: --checkpoint when it is "
                  "a Hugging Face folder)")
  im = sub.add_parser("import-peft", help="turn a PEFT prompt-tuning adapter folder into a "
                      ".npy prompt", allow_abbrev=False)
  im.add_argument("--adapter", required=True, help="the PEFT adapter folder")
  im.add_argument("--out", required=True, help="the [P, H] .npy to write")
  ex.add_argument("--checkpoint", default=None, help="the backbone: a T5X checkpoint or a "
                  "Hugging Face folder (default with --prompt=MODEL_DIR: the run's)")
  im.add_argument("--checkpoint", required=True, help="the backbone: a T5X checkpoint or a "
                  "Hugging Face folder (its width and provenance fingerprint are checked)")
  for p in (ex, im):
    p.add_argument("--allow_backbone_mismatch", action="store_true",
                   help="go on when the prompt's provenance names another backbone")
    p.add_argument("--overwrite", action="store_true")


_INTEROP_COMMANDS = {"export-peft": _export_peft, "import-peft": _import_peft}


def _spot(args) -> int:
  """`spot rank`: sources by similarity to a probe; `spot add`: put a prompt in a library."""
  from prompt_tuning.prompts import spot as spot_lib  # numpy only
  needed = ["probe"] if args.action == "rank" else ["name", "task", "prompt"]
  missing = [f"--{n}" for n in needed if getattr(args, n) is None]
  if missing:
    raise ValueError(f"spot {args.action} needs {' '.join(missing)}")
  if args.action == "add":
    source = spot_lib.add_source(args.library, args.name, args.task, args.prompt,
                                 overwrite=args.overwrite)
    print(f"added {source.name} (task {source.task}) to {args.library}")
    return 0
  ranked = spot_lib.rank(args.library, args.probe, args.metric)
  print(spot_lib.format_ranking(ranked[:args.top_k] if args.top_k else ranked))
  return 0


def _add_spot_parser(sub) -> None:
  sp = sub.add_parser("spot", help="SPoT: rank a library's source prompts by similarity to a "
                      "probe prompt, or add a prompt to a library", allow_abbrev=False)
  sp.add_argument("action", choices=("rank", "add"))
  sp.add_argument("--library", required=True, help="folder with index.json and .npy prompts")
  sp.add_argument("--probe", help="rank: a [P, H] prompt trained briefly on the new task")
  sp.add_argument("--metric", default="average", choices=("average", "per_token"),
                  help="rank: cosine of average tokens (default) or per-token average cosine")
  sp.add_argument("--top_k", type=int, default=None, help="rank: print only the best K")
  sp.add_argument("--name", help="add: the source's name")
  sp.add_argument("--task", help="add: the task the prompt was trained on")
  sp.add_argument("--prompt", help="add: the [P, H] .npy prompt")
  sp.add_argument("--overwrite", action="store_true", help="add: replace a source of that name")


# Gin binaries: subcommand -> (the configurable it calls, its run file).
_GIN_BINARIES = {"train": "train", "eval": "evaluate", "infer": "infer",
                 "precompile": "precompile"}
_RUN_FILES = {"train": "runs/prompt_finetune.gin", "eval": "runs/prompt_eval.gin",
              "infer": "runs/prompt_infer.gin", "precompile": "runs/precompile.gin"}


def _start_jax(args: argparse.Namespace) -> None:
  """Virtual CPU devices and jax.distributed, from flags or the environment.

  `--jax_distributed` alone calls jax.distributed.initialize() with JAX's own
  detection (TPU pods, SLURM, ...); `--coordinator_address=host:port
  --num_processes=N --process_id=i` (or PT_COORDINATOR, PT_NUM_PROCESSES,
  PT_PROCESS_ID) name the coordinator explicitly.
  """
  if args.virtual_devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={int(args.virtual_devices)}").strip()
  import jax
  address = args.coordinator_address or os.environ.get("PT_COORDINATOR")
  if address:
    # CPU processes need gloo for their collectives; accelerators ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=int(args.num_processes or os.environ["PT_NUM_PROCESSES"]),
        process_id=int(args.process_id if args.process_id is not None
                       else os.environ["PT_PROCESS_ID"]))
  elif args.jax_distributed:
    jax.distributed.initialize()


def _run_file_header(command: str) -> str:
  """The comment block that opens a bundled run file: what it needs, and an example."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for configs in (os.path.join(os.path.dirname(here), "configs"), os.path.join(here, "configs")):
    path = os.path.join(configs, _RUN_FILES[command])
    if os.path.isfile(path):
      lines = []
      with open(path) as f:
        for line in f:
          if not line.startswith("#"):
            break
          lines.append(line[2:].rstrip() if line.startswith("# ") else line[1:].rstrip())
      return f"{_RUN_FILES[command]}:\n" + "\n".join(lines)
  return ""


def _add_gin_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                 help="a gin file (repeatable); bundled configs (models/, prompts/, runs/, "
                      "decoding/) are found from any directory")
  p.add_argument("--gin_search_paths", type=lambda v: [x for x in v.split(",") if x],
                 default=[], metavar="A,B", help="more folders to find gin files in")
  p.add_argument("--virtual_devices", type=int, default=None, metavar="N",
                 help="N CPU devices (precompile, tests)")
  p.add_argument("--jax_distributed", action="store_true",
                 help="multi-host: jax.distributed.initialize() with JAX's own detection")
  p.add_argument("--coordinator_address", default=None, metavar="HOST:PORT")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  p.add_argument("--verbose", action="store_true",
                 help="show library logs (Orbax, absl, TensorFlow) below WARNING")


def build_parser() -> argparse.ArgumentParser:
  """The one parser of the `prompt-tuning` command (no JAX or TensorFlow import)."""
  parser = argparse.ArgumentParser(prog="prompt-tuning", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, what in (("train", "train prompts (or anything the freezing rules allow)"),
                     ("eval", "evaluate a trained prompt with the task's metrics"),
                     ("infer", "write predictions as JSON Lines"),
                     ("precompile", "compile a sharded train step from shapes alone")):
    p = sub.add_parser(
        name, help=f"{what}: --gin_file=... --gin.NAME=VALUE", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"prompt-tuning {name} --gin_file=MODEL_FILE --gin_file={_RUN_FILES[name]} "
              "[--gin_file=...] [--gin.NAME=VALUE ...]",
        description=f"{what}. Bindings are --gin.NAME=VALUE with VALUE a gin literal, e.g. "
                    "--gin.MODEL_DIR=\"'/tmp/run'\" --gin.TRAIN_STEPS=1000. A binding that "
                    "nothing reads is an error naming the closest known names "
                    "(--gin.allow_unused=True makes it a warning).",
        epilog=_run_file_header(name))
    _add_gin_flags(p)
    if name in ("eval", "infer"):  # Taken from the unparsed rest: a positional would swallow
      # a --gin.NAME={'a': 1} binding (argparse reads an argument with a space as positional).
      p.description += (f" `prompt-tuning {name} MODEL_DIR` alone reads the config.gin that "
                        "the training run saved there (the run file is added; --gin_file and "
                        "--gin.NAME=VALUE override it).")
  for name, helptext in (("inspect", "list a checkpoint's parameters and inferred config"),
                         ("decode", "decode one input with a T5X or Hugging Face checkpoint")):
    p = sub.add_parser(name, help=helptext, allow_abbrev=False)
    p.add_argument("checkpoint", help="T5X checkpoint (folder or model dir) or HF folder")
    p.add_argument("--relative_attention_max_distance", type=int, default=None,
                   help="only for a T5X checkpoint that records no config (default 128); "
                        "a recorded value is read, and contradicting it is an error")
  qs = sub.add_parser("quickstart", help="pretrain a tiny T5 (cached), prompt-tune a held-out "
                      "task, print the accuracy table", allow_abbrev=False)
  qs.add_argument("--cache_dir", default=None, help="backbone cache (default "
                  "$PROMPT_TUNING_CACHE or ~/.cache/prompt_tuning)")
  qs.add_argument("--work_dir", default=None, help="prompt run folder (default: a temp dir)")
  qs.add_argument("--size", default="tiny", choices=("tiny", "small"))
  qs.add_argument("--seed", type=int, default=0)
  qs.add_argument("--pretrain_steps", type=int, default=3000)
  qs.add_argument("--prompt_steps", type=int, default=400)
  qs.add_argument("--prompt_length", type=int, default=10)
  qs.add_argument("--eval_examples", type=int, default=512)
  qs.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="activations of prompt tuning and evaluation (the prompt and its "
                  "optimizer state stay float32)")
  tk = sub.add_parser("tasks", help="list registered tasks and mixtures, or show examples",
                      allow_abbrev=False)
  tk.add_argument("action", choices=("list", "show"))
  tk.add_argument("name", nargs="?", default=None,
                  help="list: a regular expression; show: a task or mixture name")
  tk.add_argument("--split", default=None, help="show: the split (default validation)")
  tk.add_argument("--num_examples", type=int, default=3)
  tk.add_argument("--vocabulary", default=None, help="t5, mt5, byte or a SentencePiece "
                  "model path (default: PT_TASK_VOCABULARY, else T5X's T5 vocabulary)")
  rc = sub.add_parser("recycle", help="move a prompt from one frozen model to another",
                      allow_abbrev=False)
  rc.add_argument("--source_checkpoint", required=True, help="T5X checkpoint or HF folder")
  rc.add_argument("--target_checkpoint", required=True)
  rc.add_argument("--prompt", required=True, help="[P, H_source] .npy")
  rc.add_argument("--out", required=True, help="where to write the [P, H_target] .npy")
  rc.add_argument("--method", default="linear", choices=("linear", "mlp", "linear_combination"))
  rc.add_argument("--filter_file", default=None, help="{id: piece} JSON choosing the support "
                  "vocabulary (e.g. english_vocab_filter.json); default: all shared ids")
  rc.add_argument("--skip", type=int, default=None, help="support ids to skip (default 1000 "
                  "with a filter file, 0 without)")
  rc.add_argument("--take", type=int, default=4000)
  rc.add_argument("--overwrite", action="store_true")
  rc.add_argument("--allow_backbone_mismatch", action="store_true",
                  help="recycle a prompt whose provenance names another source backbone")
  dec = sub.choices["decode"]
  dec.add_argument("--spm_model", default=None,
                   help="SentencePiece model file (default: the one recorded with the "
                   "checkpoint, such as a Hugging Face folder's spiece.model)")
  dec.add_argument("--input", required=True)
  dec.add_argument("--method", choices=("greedy", "beam", "sample"), default="greedy")
  dec.add_argument("--max_decode_length", type=int, default=16)
  dec.add_argument("--num_beams", type=int, default=4)
  dec.add_argument("--temperature", type=float, default=1.0)
  dec.add_argument("--seed", type=int, default=0)
  from prompt_tuning.serving import cli as serving_cli  # argparse only: no JAX import
  serving_cli.add_arguments(sub.add_parser(
      "serve", help="serve many prompts from one frozen model over HTTP (batched across tasks)",
      allow_abbrev=False))
  _add_interop_commands(sub)
  _add_spot_parser(sub)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  from prompt_tuning.runtime import background
  # TensorStore's callbacks to an event loop Orbax closed after a failure
  # print tracebacks from its threads, late or at exit: dropped from the start.
  background.drop_closed_loop_callbacks()
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  bindings, unknown = [], []
  args.model_dir = None
  for arg in rest:
    if args.command in ("eval", "infer") and not arg.startswith("-") and not args.model_dir:
      args.model_dir = arg  # `prompt-tuning eval MODEL_DIR`: its saved config.gin.
    elif arg.startswith("--gin.") and args.command in _GIN_BINARIES:
      name, eq, value = arg[len("--gin."):].partition("=")
      if not eq or not name:
        print(f"prompt-tuning {args.command}: error: bad gin flag {arg!r}; expected "
              "--gin.NAME=VALUE", file=sys.stderr)
        return 2
      bindings.append(f"{name} = {value}")
    else:
      unknown.append(arg)
  if unknown:
    expected = ("--gin_file=..., --gin.NAME=VALUE or --gin_search_paths=..."
                if args.command in _GIN_BINARIES else "see --help")
    print(f"prompt-tuning {args.command}: error: unknown arguments {unknown}; expected "
          f"{expected}", file=sys.stderr)
    return 2
  try:
    if args.command in _GIN_BINARIES:
      args.argv = argv
      return _run_gin(args, bindings)
    if args.command == "recycle" and args.skip is None:
      args.skip = 1000 if args.filter_file else 0
    return {"inspect": _inspect, "decode": _decode, "quickstart": _quickstart,
            "recycle": _recycle, "tasks": _tasks, "serve": _serve,
            "spot": _spot, **_INTEROP_COMMANDS}[args.command](args)
  except (FileNotFoundError, ValueError, KeyError, FileExistsError) as e:
    return _error(args.command, e)
  except ImportError as e:
    extra = _EXTRAS.get((getattr(e, "name", None) or "").split(".")[0])
    if extra is None:
      raise
    return _error(args.command, ImportError(
        f"{e.name} is missing: `{args.command}` needs the [{extra}] extra; install it with "
        f"pip install 'prompt-tuning[{extra}]' (from a checkout: pip install -e '.[{extra}]')"))


# A module of an optional extra (setup.py's extras_require) -> that extra.
_EXTRAS = {"uvicorn": "serve", "fastapi": "serve", "starlette": "serve",
           "prometheus_client": "serve", "bm25s": "retrieval", "torch": "interop",
           "transformers": "interop", "peft": "interop"}


def _error(command: str, e: BaseException) -> int:
  """Prints the one error line; the libraries' threads add nothing after it. Exit code 2."""
  from prompt_tuning.runtime import background
  # Gin appends "In call to configurable 'train' (<function ...>)" on a line of its own.
  message = re.sub(r"\n\s*In call to configurable .*", "", str(e), flags=re.S)
  print(f"prompt-tuning {command}: error: {message}", file=sys.stderr)
  background.quiet_after_error()
  return 2


if __name__ == "__main__":
  sys.exit(main())
