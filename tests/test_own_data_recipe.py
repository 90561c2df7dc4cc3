"""Issue 31, point 5: the README's "Your own data and checkpoint" recipe runs as written.

The README's two blocks behind `<!-- recipe: hf -->` and `<!-- recipe:
quickstart -->` each run as one bash script (`set -e`: any failing command
fails the test), with `prompt-tuning` an executable that runs this checkout's
CLI, as the installed console script would. The only text replaced is the
value of the variables each block assigns on its first lines, the
placeholders for the user's own paths:

  HF_T5     a tiny T5 written by transformers' `save_pretrained`, with the
            fixture t5_spm.model as its `spiece.model` (../shared/fixtures)
  BACKBONE  a random tiny byte-vocabulary backbone, written the way
            `backbones.pretrain` exports one (Orbax checkpoint_N, config.json
            recording the config and the vocabulary)
  DATA      a folder with made-up train.jsonl and dev.jsonl
  RUNS      a temporary folder
  PORT      a free port

Each block's wall time is printed (the issue's target: a new user's own file
trained and evaluated in under 5 minutes).
"""

import json
import os
import random
import re
import resource
import shutil
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, fixture_path

README = os.path.join(REPO_ROOT, "README.md")
PLACEHOLDERS = {"hf": ("HF_T5", "DATA", "RUNS", "PORT"),
                "quickstart": ("BACKBONE", "DATA", "RUNS", "PORT")}
DEV_ROWS = 10


def recipe(name: str, text: str) -> tuple[list[str], str]:
  """(the placeholder variables it assigns, the block's text) of `<!-- recipe: name -->`."""
  lines = text.split("\n")
  marker = f"<!-- recipe: {name} -->"
  assert marker in lines, f"README.md has no {marker} block"
  start = lines.index(marker)
  assert lines[start + 1] == "```bash", f"{marker} must sit right above a ```bash block"
  end = lines.index("```", start + 2)
  body = lines[start + 2:end]
  assigned = []
  for line in body:
    m = re.match(r"^([A-Z_0-9]+)=", line)
    if not m:
      break
    assigned.append(m[1])
  return assigned, "\n".join(body)


def with_values(block: str, values: dict) -> str:
  """The block with each placeholder's assignment (comment and all) given `values`."""
  out = []
  for line in block.split("\n"):
    m = re.match(r"^([A-Z_0-9]+)=", line)
    out.append(f"{m[1]}={values[m[1]]}" if m and m[1] in values else line)
  return "\n".join(out)


def test_the_recipe_blocks_are_found_and_their_placeholders_are_named():
  text = open(README).read()
  for name, expected in PLACEHOLDERS.items():
    assigned, block = recipe(name, text)
    assert tuple(assigned) == expected, (name, assigned)
    for command in ("prompt-tuning train", "prompt-tuning eval", "prompt-tuning infer",
                    "prompt-tuning serve", "curl"):
      assert command in block, (name, command)
  assert with_values("A=1  # x\necho $A", {"A": "'/t'"}) == "A='/t'\necho $A"


@pytest.fixture(scope="module")
def made_up(tmp_path_factory):
  """The placeholders' values: a tiny HF T5 folder, a byte backbone, data, a bin folder."""
  spm = fixture_path("t5_spm.model")
  transformers = pytest.importorskip("transformers", reason="the HF recipe needs transformers "
                                     "to write its tiny T5 ([interop] extra)")
  torch = pytest.importorskip("torch")
  root = tmp_path_factory.mktemp("recipe")
  # A T5 1.0-style model (tied head, like t5-small): transformers 5 saves a v1.1 config's
  # head tied as well, which is not what a v1.1 checkpoint holds.
  hf = root / "hf_t5"
  config = transformers.T5Config(vocab_size=32128, d_model=8, d_kv=4, d_ff=16, num_layers=1,
                                 num_decoder_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8,
                                 relative_attention_max_distance=16, feed_forward_proj="relu",
                                 tie_word_embeddings=True, decoder_start_token_id=0)
  torch.manual_seed(0)
  transformers.T5ForConditionalGeneration(config).save_pretrained(str(hf))
  shutil.copyfile(spm, hf / "spiece.model")
  backbone = root / "synthetic_tiny"
  _byte_backbone(str(backbone))
  data = root / "data"
  data.mkdir()
  rng = random.Random(0)
  words = {"positive": ["a masterpiece", "great fun", "loved it", "a joy"],
           "negative": ["dull", "a mess", "boring", "a waste"]}
  for split, rows in (("train", 40), ("dev", DEV_ROWS)):
    with open(data / f"{split}.jsonl", "w") as f:
      for _ in range(rows):
        label = rng.choice(sorted(words))
        f.write(json.dumps({"text": rng.choice(words[label]), "label": label}) + "\n")
  # `prompt-tuning` as the console script is: an executable (so `kill $!` stops the
  # server itself, not a shell around it).
  bin_dir = root / "bin"
  bin_dir.mkdir()
  exe = bin_dir / "prompt-tuning"
  exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m prompt_tuning.cli.main \"$@\"\n")
  exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
  return dict(hf=str(hf), backbone=str(backbone), data=str(data), bin=str(bin_dir),
              root=root)


def _byte_backbone(out: str) -> None:
  """A random tiny backbone in backbones.pretrain's export form."""
  import jax
  import orbax.checkpoint as ocp
  from prompt_tuning import backbones
  from prompt_tuning.models import params as params_lib
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.readers import config as config_lib
  from prompt_tuning.readers import vocabulary as vocabulary_lib
  config = backbones.backbone_config("tiny")
  params = params_lib.init_params(T5(config), jax.random.PRNGKey(0))
  ocp.PyTreeCheckpointer().save(os.path.join(out, "checkpoint_2"), {
      "target": jax.device_get(params), "state": {"step": np.int32(2)}})
  config_lib.write_record(out, config)
  vocabulary_lib.record(out, vocabulary_lib.BYTE)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("name,checkpoint,run", [("hf", "hf", "reviews_hf"),
                                                 ("quickstart", "backbone", "reviews_bytes")])
def test_the_readme_recipe_trains_evaluates_infers_and_serves(name, checkpoint, run, made_up):
  from prompt_tuning.cli import environment
  assigned, block = recipe(name, open(README).read())
  runs = made_up["root"] / f"runs_{name}"
  values = {"HF_T5": made_up["hf"], "BACKBONE": made_up["backbone"], "DATA": made_up["data"],
            "RUNS": str(runs), "PORT": str(_free_port())}
  script = "set -e\n" + with_values(block, {k: values[k] for k in assigned})
  env = dict(os.environ, PATH=made_up["bin"] + os.pathsep + os.environ["PATH"],
             PYTHONPATH=REPO_ROOT,
             # The programs compiled by the other binaries' tests are reused, as for users.
             PROMPT_TUNING_CACHE=environment.project_cache_dir())
  start, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
  done = subprocess.run(["bash", "-c", script], cwd=str(made_up["root"]), env=env,
                        capture_output=True, text=True, timeout=1200)
  seconds, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
  # CPU seconds too: on a shared machine the wall time says more about the load.
  print(f"\nREADME recipe '{name}': {seconds:.0f} s wall, {cpu:.0f} s CPU")
  said = done.stdout + done.stderr
  assert done.returncode == 0, said[-4000:]
  model_dir = runs / run
  assert (model_dir / "config.gin").is_file()
  assert (model_dir / "prompts" / "step_30" / "encoder_prompt.prompt.npy").is_file()
  with open(model_dir / "eval" / "metrics.jsonl") as f:
    row = json.loads(f.readlines()[-1])
  assert row["step"] == 30 and "accuracy" in json.dumps(row), row
  with open(model_dir / "infer" / "reviews-validation-step_30.jsonl") as f:
    assert len(f.readlines()) == DEV_ROWS
  assert "using the configuration saved in" in done.stderr
  # curl's answer (no newline after it): the first JSON object from its request id on.
  answer, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index('{"request_id"'):])
  assert answer["prompt"] == "reviews" and isinstance(answer["outputs"][0]["text"], str)
