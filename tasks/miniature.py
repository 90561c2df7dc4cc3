"""The miniature's corpus, its SentencePiece vocabulary, and its seqio tasks.

`prepare(spec)` is the cached first step of making the real-language family
(`python -m prompt_tuning.miniature make`): it cleans the GCIDE dictionary
(`gcide`), holds out 10% of its entries, trains a SentencePiece vocabulary
on the rest, tokenizes both parts and ranks the pieces by frequency:

    corpus = prepare(CorpusSpec())      # or find it cached; a Corpus of paths
    corpus.vocabulary()                 # seqio vocabulary: 8,000 pieces + 100 sentinels
    corpus.frequent_ids(5000)           # the 5,000 most frequent pieces (pretraining corpus)
    corpus.frequent_ids(4000, skip=1000)  # recycling's rows

Why a vocabulary of our own (8,000 unigram pieces, trained with the
`sentencepiece` library on the pretraining corpus only) and not T5's 32,000:
in a model of d_model 16-192 the input embedding and the untied output
layer would hold most of the parameters, and most of T5's rows name pieces
that never occur in a dictionary's definitions, so they would stay at their
random initialization. "Sampled vocabulary" initialization would then draw
untrained noise: the flaw the byte family had. With pieces fitted to this
corpus, every row occurs in pretraining (`piece_ranks.json` has the counts).

Registered seqio tasks (`register(prefix)`, done for "miniature" when
`prompt_tuning.tasks` is imported; nothing is read until a dataset is):

  <prefix>_span_corruption   train: the pretraining entries; validation: the
                             held-out entries (the backbones' quality)
  <prefix>_pos               definition -> noun / verb / adjective / adverb
  <prefix>_etymology         headword -> Latin / French / Anglo-Saxon / Greek
  <prefix>_headword          definition -> headword (generation, exact match)
  <prefix>_binary            definition -> noun / verb (recycling's task)
  <prefix>_definition_etymology   definition -> the language of the word it defines:
                             two steps, the headword task then the etymology task
                             (recursion's, benchmarks/research/recursion.py)
  <prefix>_definition_etymology_headword   the same entries, the headword as input
                             (step 2 alone: the control that the task is two-step)
  <prefix>_{pos,etymology,binary,...}_rank   the classification tasks, by rank classification
  <prefix>_open_book_<mode>  open-book QA over the dictionary (`dictionary_qa`)
  <prefix>_pos_etymology     pos + etymology, equal rates, no task marker (ID-PT's)
  <prefix>_pos_etymology_marked   the same with a `task_index` feature (0: pos,
                             1: etymology), from <prefix>_task_index_<task>

The task splits (train / validation / test) come from held-out entries only.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import shutil
from typing import Optional

import numpy as np

from prompt_tuning import layout
from prompt_tuning.tasks import gcide, metrics, span_corruption

EXTRA_IDS = 100            # T5's sentinels: <extra_id_0> is the top id
INPUTS_LENGTH = 64         # span-corruption inputs (EOS included)
# Each chunk: 70 corpus tokens -> 64 inputs, 14 targets (EOS included).
CHUNK_LENGTH, TARGETS_LENGTH = span_corruption.chunk_lengths(INPUTS_LENGTH)
FEATURE_LENGTHS = {"inputs": 64, "targets": 16}  # the tasks' lengths
MAKE_COMMAND = "python -m prompt_tuning.miniature make"
# The mixture ID-PT is tested on (benchmarks/research/idpt.py), in task-index order.
MIXTURE_TASKS = ("pos", "etymology")
MIXTURE = "pos_etymology"


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """What the corpus and vocabulary are made from (every field changes them).

  Attributes:
    seed: the held-out entries' seed (and the pretraining order's).
    pieces: SentencePiece pieces (pad 0, EOS 1, UNK 2 included).
    folder: a folder of GCIDE words_*.json files; None is the installed package.
    held_out_fraction: the entries held out (tests on a few-KB slice hold out
      more, so that every task split has examples).
  """
  seed: int = 0
  pieces: int = 8000
  folder: Optional[str] = None
  held_out_fraction: float = gcide.HELD_OUT_FRACTION


def _files(spec: CorpusSpec) -> list[str]:
  return sorted(glob.glob(os.path.join(spec.folder or gcide.data_dir(), "words_*.json")))


def corpus_key(spec: CorpusSpec) -> str:
  """A short hash of the corpus files' contents, the seed and the piece count."""
  h = hashlib.sha256(f"seed={spec.seed}/pieces={spec.pieces}".encode())
  if spec.held_out_fraction != gcide.HELD_OUT_FRACTION:
    h.update(f"/held_out={spec.held_out_fraction}".encode())
  for path in _files(spec):
    h.update(os.path.basename(path).encode())
    with open(path, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A prepared corpus folder: held_out.txt, sentencepiece.model, piece_ranks.json,
  {train,held_out}_tokens.npy, corpus.json and DONE."""
  path: str
  spec: CorpusSpec

  @property
  def spm_path(self) -> str:
    return os.path.join(self.path, "sentencepiece.model")

  def held_out(self) -> tuple[str, ...]:
    with open(os.path.join(self.path, "held_out.txt")) as f:
      return tuple(f.read().split("\n"))

  def record(self) -> dict:
    with open(os.path.join(self.path, "corpus.json")) as f:
      return json.load(f)

  def vocabulary(self):
    """The seqio vocabulary: the pieces, then EXTRA_IDS sentinels from the top down."""
    return _vocabulary(self.spm_path)

  def tokens(self, part: str) -> np.ndarray:
    """The token stream of 'train' (pretraining entries) or 'held_out' (int32)."""
    return np.load(os.path.join(self.path, f"{part}_tokens.npy"))

  def frequent_ids(self, count: int, skip: int = 0) -> np.ndarray:
    """Piece ids by frequency on the pretraining corpus (most frequent first), after
    skipping `skip` of them; pad, EOS and UNK are not pieces and never listed."""
    with open(os.path.join(self.path, "piece_ranks.json")) as f:
      ranked = json.load(f)["ids_by_frequency"]
    return np.asarray(ranked[skip:skip + count], np.int32)


@functools.lru_cache(maxsize=8)
def _vocabulary(path: str):
  import seqio
  return seqio.SentencePieceVocabulary(path, extra_ids=EXTRA_IDS)


def corpus_dir(spec: CorpusSpec, cache_dir: Optional[str] = None) -> str:
  cache_dir = cache_dir or layout.default_cache_dir()
  return os.path.join(cache_dir, "miniature", f"corpus_{corpus_key(spec)}")


NotMade = gcide.NotMade  # a cached step not made; the message names the command


def find(spec: CorpusSpec = CorpusSpec(), cache_dir: Optional[str] = None) -> Corpus:
  """The prepared corpus; NotMade (one line, with the command) if it is not."""
  path = corpus_dir(spec, cache_dir)
  if not os.path.exists(os.path.join(path, "DONE")):
    state = "half-written (no DONE)" if os.path.exists(path) else "missing"
    raise NotMade(f"The miniature corpus and vocabulary at {path} are {state}: {MAKE_COMMAND}")
  return Corpus(path, spec)


def prepare(spec: CorpusSpec = CorpusSpec(), cache_dir: Optional[str] = None,
            log=print) -> Corpus:
  """Makes (or finds cached) the corpus folder; see the module docstring."""
  path = corpus_dir(spec, cache_dir)
  if os.path.exists(os.path.join(path, "DONE")):
    return Corpus(path, spec)
  import sentencepiece as spm
  work = path + ".partial"
  shutil.rmtree(work, ignore_errors=True)  # A half-made one is made again: it is minutes.
  os.makedirs(work)
  entries = gcide.load_entries(spec.folder)
  held = gcide.held_out(list(entries), spec.seed, spec.held_out_fraction)
  with open(os.path.join(work, "held_out.txt"), "w") as f:
    f.write("\n".join(held))
  docs = gcide.pretraining_documents(entries, held, spec.seed)
  log(f"corpus: {len(entries)} entries, {len(held)} held out, {len(docs)} pretraining "
      f"documents, {sum(map(len, docs))} characters; training {spec.pieces} pieces")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(docs), model_prefix=os.path.join(work, "sentencepiece"),
      vocab_size=spec.pieces, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=0.9995, max_sentence_length=1 << 16, num_threads=2,
      input_sentence_size=0, minloglevel=2,
      # A few-KB test corpus cannot fill `pieces`; the real one does (corpus.json says).
      hard_vocab_limit=False)
  processor = spm.SentencePieceProcessor(model_file=os.path.join(work, "sentencepiece.model"))
  streams = {}
  for part, texts in (("train", docs), ("held_out", gcide.held_out_documents(entries, held))):
    # Documents end with EOS, as T5's text spans do after concatenation.
    ids = processor.encode(texts)
    stream = np.fromiter((t for doc in ids for t in (*doc, 1)), np.int32)
    np.save(os.path.join(work, f"{part}_tokens.npy"), stream)
    streams[part] = stream
  pieces = processor.get_piece_size()
  counts = np.bincount(streams["train"], minlength=pieces)[:pieces]
  order = [int(i) for i in np.argsort(-counts, kind="stable") if i > 2]
  with open(os.path.join(work, "piece_ranks.json"), "w") as f:
    json.dump({"ids_by_frequency": order, "counts": [int(counts[i]) for i in order]}, f)
  with open(os.path.join(work, "corpus.json"), "w") as f:
    json.dump({"spec": dataclasses.asdict(spec), "entries": len(entries),
               "held_out_entries": len(held), "pieces": pieces, "held_out_sha256": gcide.fingerprint(held),
               "pretraining_characters": sum(map(len, docs)),
               "tokens": {k: int(len(v)) for k, v in streams.items()},
               "pieces_never_seen": int((counts[3:] == 0).sum())}, f, indent=1)
  open(os.path.join(work, "DONE"), "w").close()
  shutil.rmtree(path, ignore_errors=True)
  os.rename(work, path)
  return Corpus(path, spec)


@functools.lru_cache(maxsize=8)
def span_corruption_arrays(corpus: Corpus, split: str, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Corrupted (inputs, targets) without EOS: 'train' from the pretraining stream,
  'validation' from the held-out entries (drawn with another seed)."""
  part = {"train": "train", "validation": "held_out"}[split]
  vocab_size = corpus.vocabulary().vocab_size
  return span_corruption.corrupt_chunks(corpus.tokens(part), INPUTS_LENGTH, vocab_size,
                                        seed=seed if split == "train" else seed + 10_000_019)


# --- seqio registration --------------------------------------------------------------

def _lazy_vocabulary(locate):
  """A seqio SentencePieceVocabulary whose file is found on first use, so that
  registering the tasks reads nothing and a missing corpus is one line."""
  import seqio

  class MiniatureVocabulary(seqio.SentencePieceVocabulary):
    def __init__(self):
      super().__init__("", extra_ids=EXTRA_IDS)

    def _model_context(self):
      if not self._sentencepiece_model_file:
        self._sentencepiece_model_file = locate().spm_path
      return super()._model_context()

    def __repr__(self):
      return f"MiniatureVocabulary({self._sentencepiece_model_file or 'not yet found'})"

  return MiniatureVocabulary()


@functools.lru_cache(maxsize=8)
def _entries_and_held(corpus: Corpus):
  return gcide.load_entries(corpus.spec.folder), corpus.held_out()


def register(prefix: str = "miniature", spec: CorpusSpec = CorpusSpec(),
             cache_dir: Optional[str] = None) -> None:
  """Registers the span-corruption task and the real-text tasks (idempotent).

  The corpus is found when a dataset is first read (with NotMade if it was
  not prepared); `cache_dir` None is the default cache at that moment.
  """
  import seqio
  import tensorflow as tf
  from prompt_tuning.tasks import benchmarks, postprocessors, synthetic
  if f"{prefix}_span_corruption" in seqio.TaskRegistry.names():
    return
  locate = functools.partial(find, spec, cache_dir)
  vocab = _lazy_vocabulary(locate)
  features = {"inputs": seqio.Feature(vocab, add_eos=True),
              "targets": seqio.Feature(vocab, add_eos=True)}
  source_class = synthetic._in_memory_source_class()  # pylint: disable=protected-access

  def corruption_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    inputs, targets = span_corruption_arrays(locate(), split)
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})

  seqio.TaskRegistry.add(
      f"{prefix}_span_corruption",
      source=source_class(corruption_fn, splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.append_eos_after_trim], output_features=features,
      metric_fns=[])

  def examples_fn(task):
    def dataset_fn(split, shuffle_files=False, seed=None):
      del shuffle_files, seed
      corpus = locate()
      entries, held = _entries_and_held(corpus)
      data = gcide.task_examples(task, entries, held, split, corpus.spec.seed)
      return tf.data.Dataset.from_tensor_slices(data)
    return dataset_fn

  tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  splits = tuple(name for name, _ in gcide.TASK_SPLITS)
  for task in gcide.TASKS:
    seqio.TaskRegistry.add(f"{prefix}_{task}", source=source_class(examples_fn(task), splits),
                           preprocessors=tokenize, output_features=features,
                           metric_fns=[metrics.exact_match])
    if task in gcide.LABELS:
      seqio.TaskRegistry.add(
          f"{prefix}_{task}_rank", source=source_class(examples_fn(task), splits),
          preprocessors=[benchmarks.expand_candidates(gcide.LABELS[task]), *tokenize],
          output_features=features, postprocess_fn=postprocessors.rank_candidate,
          metric_fns=[metrics.rank_classification])
  # Issue 35's mixture of two tasks whose inputs differ in form (a definition for the
  # part of speech, a bare headword for the etymology), so that an input-dependent
  # prompt can tell them apart: unmarked, and marked with a task index.
  for i, task in enumerate(MIXTURE_TASKS):
    seqio.TaskRegistry.add(f"{prefix}_task_index_{task}",
                           source=source_class(examples_fn(task), splits),
                           preprocessors=[*tokenize, benchmarks.add_task_index(i)],
                           output_features=features, metric_fns=[metrics.exact_match])
  seqio.MixtureRegistry.add(f"{prefix}_{MIXTURE}", [(f"{prefix}_{t}", 1.0) for t in MIXTURE_TASKS])
  seqio.MixtureRegistry.add(f"{prefix}_{MIXTURE}_marked",
                            [(f"{prefix}_task_index_{t}", 1.0) for t in MIXTURE_TASKS])
  from prompt_tuning.tasks import dictionary_qa
  dictionary_qa.register(prefix, locate, vocab, source_class)


def task_examples(task: str, split: str, corpus: Corpus) -> dict[str, list]:
  """A task split's raw examples (inputs, targets, label, uid) from a prepared corpus."""
  entries, held = _entries_and_held(corpus)
  return gcide.task_examples(task, entries, held, split, corpus.spec.seed)


def majority_baseline(task: str, corpus: Corpus, split: str = "test") -> float:
  """Accuracy (%) of always answering the train split's most common target."""
  entries, held = _entries_and_held(corpus)
  return gcide.majority_baseline(task, entries, held, split, corpus.spec.seed)
