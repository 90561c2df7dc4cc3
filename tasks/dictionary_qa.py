"""Open-book QA over the GCIDE dictionary, for the frozen reader (issue 35, point 1).

The passage store is every sense of the dictionary, one passage per
definition (the package's 171,910 cleaned definitions, of every entry,
held out or not):

    "zymurgy (n.) [Gr. zymh leaven + ergon work.] The art or science of ..."

headword, part of speech (the dictionary's tag), the etymology of the
sense's part-of-speech block (as the dictionary writes it; none where
`gcide`'s rules 3 and 4 dropped it) and the definition. A passage longer
than `PASSAGE_TOKENS` pieces of the miniature's vocabulary is cut at a
word boundary when the store is built, so that a question and a passage
always fit one segment of `SEGMENT_LENGTH`. One line says how many were
cut (`OpenBook.cut`; 12,988 of 171,910), and a question whose answer sat
in a cut passage is dropped. `long_passages="refuse"` refuses such a store
instead.

Questions ask about held-out entries only (pretraining never saw their
text), with the split of `gcide.task_split_of` (by headword, 60/20/20), in
three forms, each answered by one passage:

  pos        "part of speech of zymurgy"      -> "noun"
             (headwords whose senses are all one of the four classes)
  etymology  "origin of zymurgy"              -> "Greek"
             (headwords whose kept etymologies name one of the four)
  word       "word meaning art science fermentation" -> "zymurgy"
             (single-word headwords; three words of a definition found
             under no other headword: see `word_query`)

Each question lists its gold passages: those of its headword that hold the
answer (every sense of the headword for `pos`; the senses whose etymology
names the language for `etymology`; the one definition for `word`).
recall@k is the share of questions with a gold passage in BM25's top k.

Distractors are the dictionary's own: a headword's other senses (an
etymology question's gold sense competes with its siblings, which are
shorter and so score higher under BM25's length normalization), the
derived words whose definitions name the headword ("Of or pertaining to
zymurgy"), and near-identical definitions ("A genus of ...", "Same as ...")
for the word questions. The query forms were tuned on the validation split
until BM25's recall@1 fell in 50-70% with recall@20 at 90% or more (the
measured figures are in docs/open_book.md).

`prompt_tuning.retrieval.dictionary_book.prepare(corpus)` (or `python -m
prompt_tuning.miniature book`) builds the book once and caches it beside the corpus
(`Book`: the store, the questions, the bm25s index, BM25's top 20 of every
question and recall@k), in a folder keyed by everything that changes it.

Registered (by `register`, from `tasks/miniature.py`; nothing is read until
a dataset is):

  <prefix>_open_book_closed     the question alone (closed book)
  <prefix>_open_book_oracle     one segment: the question and a gold passage
  <prefix>_open_book_k{1,5,20}  BM25's top k segments
  <prefix>_open_book_rerank5of20  BM25's top 20, for a reader re-ranking to 5
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np

from prompt_tuning.tasks import gcide

PASSAGE_TOKENS = 96        # a passage's budget, in the miniature's pieces (EOS not included)
QUESTION_TOKENS = 31       # a question's budget, the template's words included
SEGMENT_LENGTH = PASSAGE_TOKENS + QUESTION_TOKENS + 1  # + EOS: 128
TEMPLATE = "question: {question} context: {passage}"
FORMS = ("pos", "etymology", "word")
# mode: (segments retrieved, passages read), the registered reader inputs.
READERS = {"k1": (1, 1), "k5": (5, 5), "k20": (20, 20), "rerank5of20": (20, 5)}
# How many of a definition's words a word question keeps (tuned on validation, word
# questions: 2 words gave BM25 recall@1/20 of 43%/74%, 3 words 70%/93%, 4 words 85%/98%).
WORD_COUNT = 3
_WORD = re.compile(r"[a-z]+")
VERSION = 1  # bump when passages or questions change: the cache key hashes it


@dataclasses.dataclass(frozen=True)
class OpenBook:
  """The store and the questions, as built (and cached) from the dictionary.

  Attributes:
    passages: [{"id", "text"}] in dictionary order (file, entry, sense, definition).
    questions: split -> [{"question", "answer", "form", "headword", "gold": [ids]}].
    cut: how many passages were cut to PASSAGE_TOKENS.
    longest: the longest passage before cutting, in pieces.
  """
  passages: list
  questions: dict
  cut: int
  longest: int


def passage_text(headword: str, sense: gcide.Sense, definition: str) -> str:
  """One passage: headword, part of speech, etymology (if kept), definition."""
  parts = [headword, f"({sense.part_of_speech})" if sense.part_of_speech else "",
           sense.etymology or "", definition]
  return " ".join(p for p in parts if p)


def _rng(*key) -> np.random.RandomState:
  digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
  return np.random.RandomState(int.from_bytes(digest[:4], "little"))


def word_query(definition: str, headword: str, count: int = WORD_COUNT) -> str:
  """A word question's words: `count` of the definition's words of 3+ letters (seeded,
  kept in order; all of them where there are fewer, but at least 2), never the
  headword itself; "" where there are not 2."""
  words = [w for w in _WORD.findall(definition.lower()) if len(w) > 2 and w != headword]
  if len(words) < 2:
    return ""
  chosen = sorted(_rng("word", headword, definition).permutation(len(words))[:count])
  return " ".join(words[i] for i in chosen)


def questions_of(entry: gcide.Entry, ids: Sequence[Sequence[str]],
                 definitions_seen: dict[str, int]) -> list[dict]:
  """The questions about one held-out entry; `ids[s][d]` is the passage id of sense s's
  definition d (None where the passage was cut), `definitions_seen` counts each
  definition text over the whole dictionary."""
  w = entry.headword
  out = []
  all_ids = [i for sense_ids in ids for i in sense_ids if i]
  classes = {gcide._class_of(s.part_of_speech, gcide.POS_CLASSES)  # pylint: disable=protected-access
             for s in entry.senses}
  if len(classes) == 1 and None not in classes and all_ids:
    out.append({"question": f"part of speech of {w}", "answer": classes.pop(),
                "form": "pos", "headword": w, "gold": all_ids})
  languages = {gcide.language_of(s.etymology) for s in entry.senses if s.etymology}
  languages.discard(None)
  if len(languages) == 1:
    language = languages.pop()
    gold = [i for s, sense_ids in zip(entry.senses, ids)
            if gcide.language_of(s.etymology) == language for i in sense_ids if i]
    if gold:
      out.append({"question": f"origin of {w}", "answer": language,
                  "form": "etymology", "headword": w, "gold": gold})
  if re.fullmatch(r"[a-z]+", w):
    # The first definition that names no other headword's identical text and
    # does not give the word away.
    for s, sense_ids in zip(entry.senses, ids):
      found = False
      for d, i in zip(s.definitions, sense_ids):
        query = word_query(d, w)
        if i and definitions_seen[d] == 1 and w not in d.lower() and query:
          out.append({"question": f"word meaning {query}", "answer": w, "form": "word",
                      "headword": w, "gold": [i]})
          found = True
          break
      if found:
        break
  return out


LONG_PASSAGES = ("cut", "refuse")


def long_passages_line(count: int, total: int, longest: int, limit: int, policy: str,
                       source: str) -> str:
  """The one line that says what happens to passages longer than their budget."""
  if policy == "refuse":
    return (f"{source}: {count} of {total} passages are longer than {limit} pieces (the "
            f"longest {longest}), so a (question, passage) segment would not fit; refused "
            f"(long_passages='refuse'): shorten them, or pass long_passages='cut'")
  return (f"{source}: {count} of {total} passages were longer than {limit} pieces (the longest "
          f"{longest}) and were cut to {limit}; questions whose answer sat in a cut passage "
          f"are dropped")


def build(entries: dict[str, gcide.Entry], held: Sequence[str], encode: Callable[[list], list],
          seed: int = 0, passage_tokens: int = PASSAGE_TOKENS, long_passages: str = "cut",
          log: Callable[[str], None] = print) -> OpenBook:
  """The store and the questions (pure: the same entries give the same book).

  Args:
    entries: `gcide.load_entries()`.
    held: the held-out headwords (the corpus's `held_out.txt`).
    encode: texts -> token id lists (the miniature's vocabulary), for the cut.
    seed: the task splits' seed (`gcide.task_split_of`).
    passage_tokens: a passage's budget in pieces (the segment's, less the question's).
    long_passages: "cut" (count them, log one line, cut them) or "refuse" (raise
      ValueError, one line, before anything else is built).
  """
  if long_passages not in LONG_PASSAGES:
    raise ValueError(f"long_passages={long_passages!r}; expected one of {LONG_PASSAGES}")
  texts, keys = [], []
  for w, entry in entries.items():
    for s, sense in enumerate(entry.senses):
      for d, definition in enumerate(sense.definitions):
        texts.append(passage_text(w, sense, definition))
        keys.append((w, s, d))
  lengths = [len(t) for t in encode(texts)]
  passages, cut = [], set()
  for (w, s, d), text, n in zip(keys, texts, lengths):
    pid = f"{w}#{s}.{d}"
    if n > passage_tokens:
      cut.add(pid)
    passages.append({"id": pid, "text": text})
  if cut:
    line = long_passages_line(len(cut), len(passages), max(lengths), passage_tokens,
                              long_passages, "open book")
    if long_passages == "refuse":
      raise ValueError(line)
    log(line)
  if cut:
    # Cut at a word boundary to at most passage_tokens pieces: drop words from the end.
    by_id = {p["id"]: p for p in passages}
    for pid in sorted(cut):
      words = by_id[pid]["text"].split(" ")
      lo, hi = 1, len(words)
      while lo < hi:  # the most words that fit
        mid = (lo + hi + 1) // 2
        if len(encode([" ".join(words[:mid])])[0]) <= passage_tokens:
          lo = mid
        else:
          hi = mid - 1
      by_id[pid]["text"] = " ".join(words[:lo])
  seen: dict[str, int] = {}
  for entry in entries.values():
    for sense in entry.senses:
      for d in set(sense.definitions):
        seen[d] = seen.get(d, 0) + 1
  splits: dict[str, list] = {name: [] for name, _ in gcide.TASK_SPLITS}
  for w in held:
    if w not in entries:
      continue
    entry = entries[w]
    ids = [[None if f"{w}#{s}.{d}" in cut else f"{w}#{s}.{d}"
            for d in range(len(sense.definitions))] for s, sense in enumerate(entry.senses)]
    splits[gcide.task_split_of(w, seed)].extend(questions_of(entry, ids, seen))
  for name, rows in splits.items():
    order = _rng("open_book", name, seed).permutation(len(rows))
    splits[name] = [rows[i] for i in order]
  return OpenBook(passages, splits, len(cut), max(lengths, default=0))


# --- readers, recall ---------------------------------------------------------------------

def check_reader(retrieved: int, read: int) -> None:
  """One line (ValueError) where a reader would keep more passages than it retrieves."""
  if not 1 <= read <= retrieved:
    raise ValueError(f"a re-ranker asked to keep {read} of {retrieved} retrieved passages; it "
                     f"can keep 1 to {retrieved}: retrieve at least as many as it keeps")
  if retrieved > MAX_RETRIEVED:
    raise ValueError(f"{retrieved} passages retrieved per question; the open book caches "
                     f"BM25's top {MAX_RETRIEVED}")


def recall_at_k(top: np.ndarray, gold: Sequence[Sequence[int]], ks: Sequence[int]
                ) -> dict[int, float]:
  """{k: % of questions with one of their gold passage positions in the first k of `top`}."""
  top = np.asarray(top)
  if max(ks) > top.shape[1]:
    raise ValueError(f"recall@{max(ks)} asked of a top {top.shape[1]}")
  hit_rank = np.full(len(top), np.inf)
  for q, (row, positions) in enumerate(zip(top, gold)):
    found = np.flatnonzero(np.isin(row, list(positions)))
    if len(found):
      hit_rank[q] = found[0]
  return {k: 100.0 * float(np.mean(hit_rank < k)) for k in ks}


# --- the cached files ----------------------------------------------------------------

MAX_RETRIEVED = 20  # BM25's top k kept per question (the largest reader's k)
BM25_PARAMS = {"k1": 1.5, "b": 0.75}  # BM25Retriever's defaults


def book_key(seed: int) -> str:
  """Everything that changes the book beyond the corpus folder (which is keyed by
  the dictionary's files, the held-out seed and the vocabulary)."""
  parts = dict(version=VERSION, passage_tokens=PASSAGE_TOKENS, question_tokens=QUESTION_TOKENS,
               word_count=WORD_COUNT, seed=seed, retrieved=MAX_RETRIEVED, bm25=BM25_PARAMS)
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def book_dir(corpus) -> str:
  return os.path.join(corpus.path, f"open_book_{book_key(corpus.spec.seed)}")


@dataclasses.dataclass(frozen=True)
class Book:
  """A prepared book folder: passages.jsonl, {split}.jsonl, top{split}.npy (BM25's
  top MAX_RETRIEVED passage positions per question), index/ (bm25s), book.json, DONE."""
  path: str

  @functools.cached_property
  def passages(self) -> list[str]:
    return [r["text"] for r in read_jsonl(os.path.join(self.path, "passages.jsonl"))]

  @functools.cached_property
  def positions(self) -> dict[str, int]:
    return {r["id"]: i for i, r in enumerate(read_jsonl(os.path.join(self.path,
                                                                     "passages.jsonl")))}

  def questions(self, split: str) -> list[dict]:
    return read_jsonl(os.path.join(self.path, f"{split}.jsonl"))

  def top(self, split: str) -> np.ndarray:
    return np.load(os.path.join(self.path, f"top_{split}.npy"))

  def record(self) -> dict:
    with open(os.path.join(self.path, "book.json")) as f:
      return json.load(f)

  def gold_positions(self, split: str) -> list[list[int]]:
    return [[self.positions[i] for i in q["gold"]] for q in self.questions(split)]


def prepared(corpus) -> Book:
  """The corpus's prepared book; NotMade (one line naming the command) if it is not.

  Building it needs BM25 (`prompt_tuning.retrieval`, a layer above the
  tasks): `python -m prompt_tuning.miniature book`, or
  `prompt_tuning.retrieval.dictionary_book.prepare(corpus)`.
  """
  path = book_dir(corpus)
  if not os.path.exists(os.path.join(path, "DONE")):
    state = "half-written (no DONE)" if os.path.exists(path + ".partial") else "missing"
    raise gcide.NotMade(f"the dictionary's open book at {path} is {state}: build it with `python -m "
                  f"prompt_tuning.miniature book` (about a minute on 2 cores)")
  return Book(path)


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# --- the readers' inputs and the seqio tasks --------------------------------------------------

def segments(encode: Callable[[list], list], question: str, passages: Sequence[str],
             length: int = SEGMENT_LENGTH) -> np.ndarray:
  """[N, length] int32: each (question, passage) segment, EOS-ended, padded; a passage of
  none ("") gives the question alone (closed book)."""
  texts = [TEMPLATE.format(question=question, passage=p) if p else f"question: {question}"
           for p in passages]
  out = np.zeros((len(texts), length), np.int32)
  for i, ids in enumerate(encode(texts)):
    ids = list(ids)[:length - 1] + [1]  # the book cut passages to fit: nothing is cut here
    out[i, :len(ids)] = ids
  return out


def reader_inputs(book: Book, split: str, mode: str, encode: Callable[[list], list],
                  limit: Optional[int] = None) -> tuple[np.ndarray, list[dict]]:
  """([Q, N * S] inputs, questions) of one registered mode: "closed" (the question alone,
  one segment of QUESTION_TOKENS + 1), "oracle" (the question and its first gold
  passage) or a READERS key (BM25's top N)."""
  rows = book.questions(split)[:limit]
  if mode == "closed":
    out = np.zeros((len(rows), QUESTION_TOKENS + 1), np.int32)
    for q, r in enumerate(rows):
      out[q] = segments(encode, r["question"], [""], QUESTION_TOKENS + 1)[0]
    return out, rows
  if mode == "oracle":
    chosen = [[book.positions[r["gold"][0]]] for r in rows]
  elif mode in READERS:
    retrieved, read = READERS[mode]
    check_reader(retrieved, read)
    chosen = book.top(split)[:len(rows), :retrieved]
  else:
    raise ValueError(f"unknown open-book mode {mode!r}; expected closed, oracle or one of "
                     f"{sorted(READERS)}")
  n = len(chosen[0]) if len(rows) else 1
  out = np.zeros((len(rows), n * SEGMENT_LENGTH), np.int32)
  for q, (r, positions) in enumerate(zip(rows, chosen)):
    out[q] = segments(encode, r["question"], [book.passages[j] for j in positions]).reshape(-1)
  return out, rows


MODES = ("closed", "oracle", *READERS)


def task_name(prefix: str, mode: str) -> str:
  return f"{prefix}_open_book_{mode}"


def register(prefix: str, locate: Callable[[], Any], vocabulary: Any, source_class: Any) -> None:
  """Registers `<prefix>_open_book_<mode>` for every mode (see the module docstring).

  Nothing is read until a dataset is: then `locate()` finds the corpus and its
  prepared book is read (`prepared`: one line naming the command if it is not). Inputs are pretokenized ([N * S] ids, the
  segments' EOS included, none of their own), so TASK_FEATURE_LENGTHS['inputs']
  is N x SEGMENT_LENGTH (QUESTION_TOKENS + 1 closed book).
  """
  import seqio
  import tensorflow as tf
  from prompt_tuning.tasks import metrics
  splits = tuple(name for name, _ in gcide.TASK_SPLITS)

  @functools.lru_cache(maxsize=None)
  def examples(mode: str, split: str):
    corpus = locate()
    book = prepared(corpus)
    import sentencepiece as spm
    processor = spm.SentencePieceProcessor(model_file=corpus.spm_path)
    inputs, rows = reader_inputs(book, split, mode, processor.encode)
    return {"inputs": inputs, "inputs_pretokenized": [r["question"] for r in rows],
            "targets": [r["answer"] for r in rows], "form": [r["form"] for r in rows]}

  def dataset_fn(mode):
    def fn(split, shuffle_files=False, seed=None):
      del shuffle_files, seed
      return tf.data.Dataset.from_tensor_slices(examples(mode, split))
    return fn

  def tokenize_targets(ds):
    return ds.map(lambda ex: {**ex, "targets_pretokenized": ex["targets"],
                              "targets": vocabulary.encode_tf(ex["targets"])})

  for mode in MODES:
    seqio.TaskRegistry.add(
        task_name(prefix, mode), source=source_class(dataset_fn(mode), splits),
        preprocessors=[tokenize_targets, seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(vocabulary, add_eos=False),
                         "targets": seqio.Feature(vocabulary, add_eos=True)},
        metric_fns=[metrics.exact_match])
