"""A backbone family and its tasks: what the suite's family experiments take.

The Lester et al. 2021 and 2022 experiments (`experiments_family`) are
written against this interface, so any family plugs in: the byte family
(`byte_family`, here) or the real-language miniature (issue 34), which
supplies the same fields.

- `Backbone`: one size of one pretraining seed: its name, checkpoint folder,
  `T5Config` and vocabulary, and its recorded quality if known.
- `Family`: the backbones (smallest first), the ids of the vocabulary
  ordered by how often the pretraining corpus uses them (sampled-vocabulary
  init takes the first 5,000; recycling's support skips 1,000 and takes
  4,000), and the tasks by seqio name with their class labels.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One pretrained backbone: `name` is its size, `seed` its pretraining seed."""
  name: str
  path: str
  config: Any  # models.t5.T5Config
  vocabulary: Any  # a seqio vocabulary
  seed: int = 0
  quality: Optional[Mapping[str, float]] = None

  @property
  def label(self) -> str:
    return f"{self.name}_seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class FamilyTasks:
  """The family experiments' tasks (seqio names) and their class labels.

  `classification`: a rank-classification task (initialization, length,
  ensembles, the size axis); `binary`: recycling's two-class task;
  `class_labels`: each rank-classified task's labels.
  """
  classification: str
  binary: str
  class_labels: Mapping[str, tuple[str, ...]]
  feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {"inputs": 16, "targets": 8})


@dataclasses.dataclass(frozen=True)
class Family:
  """Backbones (smallest first, every pretraining seed) and what the experiments read."""
  name: str
  backbones: tuple[Backbone, ...]
  frequent_ids: Callable[[], np.ndarray]  # vocabulary ids, most frequent in pretraining first
  tasks: FamilyTasks
  # Why a claim cannot be tested on this family (claim key -> reason), e.g.
  # the byte family's vocabulary rows that pretraining never used.
  untestable: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def sizes(self) -> list[str]:
    out: list[str] = []
    for b in self.backbones:
      if b.name not in out:
        out.append(b.name)
    return out

  def of(self, size: str, seed: int = 0) -> Backbone:
    for b in self.backbones:
      if b.name == size and b.seed == seed:
        return b
    raise KeyError(f"{self.name} has no backbone {size} with pretraining seed {seed}")


def fingerprint(path: str) -> str:
  """A content hash of a checkpoint folder (or file): its run-cache key part, so a
  retrained backbone at the same path misses the cache. Hashed once per state
  of the files (names, sizes, modification times)."""
  files = [path] if os.path.isfile(path) else sorted(
      os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
  stamp = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
  return _content_hash(path, stamp)


@functools.lru_cache(maxsize=None)
def _content_hash(path: str, stamp: tuple) -> str:
  h = hashlib.sha256()
  for file, _, _ in stamp:
    h.update(os.path.relpath(file, path).encode())
    with open(file, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()[:16]


def byte_frequent_ids(mixture: str = "research_pretrain", examples: int = 2000) -> np.ndarray:
  """Byte-vocabulary ids ordered by their count in the pretraining mixture's inputs and
  targets (ids never seen follow, in id order)."""
  import seqio
  from prompt_tuning.tasks import synthetic
  counts = np.zeros(synthetic.VOCAB_ROWS, np.int64)
  ds = seqio.get_mixture_or_task(mixture).get_dataset(
      synthetic.FEATURE_LENGTHS, split="train", shuffle=False, seed=0)
  for ex in ds.take(examples).as_numpy_iterator():
    for key in ("inputs", "targets"):
      np.add.at(counts, np.asarray(ex[key]), 1)
  counts[:3] = -1  # pad, EOS, UNK are not vocabulary
  order = np.argsort(-counts, kind="stable")
  return order[(order >= 3) & (order < 259)]


def byte_family(sizes: Sequence[str], seeds: Sequence[int],
                pretrain_steps: Callable[[str], int]) -> Family:
  """The byte family (words over a-h), pretrained on `research_pretrain` and cached."""
  import seqio
  from prompt_tuning import backbones
  from prompt_tuning.tasks import research, synthetic
  members = []
  for size in sizes:
    for seed in seeds:
      cfg = backbones.PretrainConfig(size=size, seed=seed, steps=pretrain_steps(size),
                                     mixture="research_pretrain")
      members.append(Backbone(size, backbones.pretrain(cfg, progress=False),
                              backbones.backbone_config(size), seqio.ByteVocabulary(), seed))
  reason_vocab = ("the byte vocabulary has 256 rows, of which pretraining uses about 26: "
                  "vocabulary-based inits and maps read mostly untrained rows; "
                  "replaced by the miniature")
  return Family(
      "byte", tuple(members), functools.lru_cache(maxsize=1)(byte_frequent_ids),
      FamilyTasks(classification="research_sorted_bare", binary="research_sorted_bare",
                  class_labels={t: research.CLASS_LABELS for t in research.CLASSIFICATION},
                  feature_lengths=dict(synthetic.FEATURE_LENGTHS)),
      untestable={"init": reason_vocab, "recycling": reason_vocab,
                  "scale": "the byte family's sizes are not ordered by quality (medium is a "
                           "worse model than small) and record none; replaced by the miniature"})


def miniature_family(suite: Any) -> Family:
  """The real-language miniature (issue 34) as a `Family`: `--family
  benchmarks.research.family:miniature_family`.

  Written against the miniature's API as it stood on branch h-mini (the
  `prompt_tuning.miniature` package: `family.require`, `backbone_config`,
  `QUALITY_FILE`; `prompt_tuning.tasks.miniature`: `find`, `FEATURE_LENGTHS`;
  `prompt_tuning.tasks.gcide.LABELS`). A size whose checkpoint is missing
  raises the miniature's one-line NotMade, naming the command that makes it.
  Tasks: part of speech (4 labels) for the classification experiments, the
  noun/verb task for recycling, both by rank classification over the labels.
  """
  import json
  from prompt_tuning.miniature import family as mini
  from prompt_tuning.tasks import gcide
  from prompt_tuning.tasks import miniature as tasks_lib
  from prompt_tuning import miniature
  corpus = miniature.corpus()  # NotMade (one line naming the make command) if not made
  members = []
  for size in mini.SIZES:
    for seed in suite.backbone_seeds:
      path = mini.require(size, mini.PretrainConfig(seed=seed))
      quality_file = os.path.join(path, mini.QUALITY_FILE)
      quality = None
      if os.path.exists(quality_file):
        with open(quality_file) as f:
          quality = {k: v for k, v in json.load(f).items() if isinstance(v, (int, float))}
      members.append(Backbone(size, path, mini.backbone_config(size), corpus.vocabulary(), seed,
                              quality))
  return Family(
      "miniature", tuple(members), lambda: corpus.frequent_ids(10 ** 9),
      FamilyTasks(classification="miniature_pos", binary="miniature_binary",
                  class_labels={"miniature_pos": tuple(gcide.LABELS["pos"]),
                                "miniature_binary": tuple(gcide.LABELS["binary"])},
                  feature_lengths=dict(tasks_lib.FEATURE_LENGTHS)))
