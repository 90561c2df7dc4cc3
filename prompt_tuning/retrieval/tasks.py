"""Open-book QA tasks for the frozen reader: questions whose inputs are retrieved passages.

From gin (configs/runs/frozen_reader.gin):

  MIXTURE_OR_TASK_NAME = @open_book_task()
  open_book_task.name = 'my_qa'
  open_book_task.splits = {'train': '/data/train.jsonl', 'validation': '/data/dev.jsonl'}
  open_book_task.passages = '/data/passages.jsonl'
  open_book_task.num_passages = %NUM_PASSAGES

Question files are JSON Lines or TSV with `question` and `answer` fields.
For each question, BM25 (bm25s) retrieves the top `num_candidates` (default
`num_passages`) passages of the store; each "question: ... context: ..."
segment is tokenized on its own, cut to `segment_length - 1` tokens, ended
with EOS and padded to `segment_length`. The `inputs` feature is the N
segments back to back ([N * S] ids, no EOS of its own), so
TASK_FEATURE_LENGTHS['inputs'] must be N * S; `inputs_pretokenized` is the
question. Retrieval runs once per split, when the split is first read.

A passage that cannot fit a segment even beside an empty question is found
when the task is registered: `long_passages='cut'` (the default) logs one
warning line saying how many of the store's passages will be cut, and
`'refuse'` raises ValueError in one line instead.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from prompt_tuning import registry
from prompt_tuning.retrieval.bm25 import BM25Retriever
from prompt_tuning.retrieval.store import PassageStore
from prompt_tuning.tasks import local_files
from prompt_tuning.tasks import metrics as metrics_lib

log = logging.getLogger(__name__)
LONG_PASSAGES = ("cut", "refuse")


def segments(vocabulary: Any, question: str, passages: Sequence[str], segment_length: int,
             template: str) -> np.ndarray:
  """[N * S] int32: each (question, passage) tokenized, cut, EOS-ended, padded to S."""
  out = np.zeros((len(passages), segment_length), np.int32)
  for i, passage in enumerate(passages):
    ids = list(vocabulary.encode(template.format(question=question, passage=passage)))
    ids = ids[:segment_length - 1] + [1]
    out[i, :len(ids)] = ids
  return out.reshape(-1)


@functools.lru_cache(maxsize=8)
def _retriever(passages: tuple[str, ...]) -> BM25Retriever:
  return BM25Retriever(PassageStore.from_files(list(passages)))


@registry.configurable
def open_book_task(name: str, splits: Mapping[str, str], passages: Union[str, Sequence[str]],
                   num_passages: int, num_candidates: int = 0, segment_length: int = 64,
                   question_field: str = "question", answer_field: str = "answer",
                   template: str = "question: {question} context: {passage}",
                   vocabulary: Optional[Any] = None, long_passages: str = "cut") -> str:
  """Registers (or re-registers) the seqio task; returns its name.

  Args:
    passages: the store's JSON Lines / TSV file(s).
    num_passages: k, the passages the reader reads (NUM_PASSAGES).
    num_candidates: segments retrieved per question (0: k); more than k
      lets the reader's re-ranker keep k of them.
    vocabulary: a seqio vocabulary; default the byte vocabulary of the
      quickstart's synthetic backbones.
    long_passages: "cut" (warn, in one line, how many passages are longer than
      a segment holds, and cut them) or "refuse" (ValueError, before any
      retrieval).
  """
  import seqio
  import tensorflow as tf
  paths = (passages,) if isinstance(passages, str) else tuple(passages)
  n = num_candidates or num_passages
  if num_passages < 1 or n < num_passages:
    raise ValueError(f"open_book_task: num_passages={num_passages}, num_candidates="
                     f"{num_candidates}; expected 1 <= num_passages <= num_candidates")
  if long_passages not in LONG_PASSAGES:
    raise ValueError(f"open_book_task: long_passages={long_passages!r}; expected one of "
                     f"{LONG_PASSAGES}")
  retriever = _retriever(paths)  # Reads the store now: an empty one fails here.
  retriever.check_k(n)
  vocab = vocabulary or seqio.ByteVocabulary()
  # A passage longer than this is cut whatever its question (the template's own
  # words and EOS take the rest of the segment).
  room = segment_length - 1 - len(vocab.encode(template.format(question="", passage="")))
  lengths = [len(vocab.encode(p.contents)) for p in retriever.store]
  long_ones = sum(length > room for length in lengths)
  if long_ones:
    line = (f"open_book_task {name}: {long_ones} of {len(lengths)} passages of "
            f"{retriever.store.source} are longer than the {room} tokens a segment of "
            f"segment_length={segment_length} leaves them (the longest {max(lengths)})")
    if long_passages == "refuse":
      raise ValueError(f"{line}; refused (long_passages='refuse'): raise segment_length or "
                       "shorten the passages")
    log.warning("%s; they are cut to fit (long_passages='refuse' refuses instead)", line)

  @functools.lru_cache(maxsize=None)
  def examples(split: str) -> dict[str, Any]:
    rows = local_files.read_records(splits[split])
    for i, row in enumerate(rows, 1):
      for field in (question_field, answer_field):
        if field not in row:
          raise ValueError(f"{splits[split]} record {i} has no field {field!r}; it has "
                           f"{sorted(row)}")
    questions = [str(r[question_field]) for r in rows]
    top, _ = retriever.retrieve(questions, n)
    store = retriever.store
    inputs = np.stack([segments(vocab, q, [store[j].contents for j in top[i]], segment_length,
                                template) for i, q in enumerate(questions)])
    return {"inputs": inputs, "inputs_pretokenized": questions,
            "targets": [str(r[answer_field]) for r in rows]}

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(examples(split))

  def tokenize_targets(ds):
    return ds.map(lambda ex: {**ex, "targets_pretokenized": ex["targets"],
                              "targets": vocab.encode_tf(ex["targets"])})

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)),
      preprocessors=[tokenize_targets, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                       "targets": seqio.Feature(vocab, add_eos=True)},
      metric_fns=[metrics_lib.exact_match])
  return name
