"""Open-book QA over the dictionary (tasks/dictionary_qa.py): the store, the questions,
recall@k, the registered tasks and the bad inputs. Everything here is built from a
few KB of the dictionary or from entries the test makes; nothing is pretrained."""

import json
import os
import re

import numpy as np
import pytest

from prompt_tuning.retrieval import dictionary_book
from prompt_tuning.tasks import dictionary_qa as dq
from prompt_tuning.tasks import gcide
from tests.conftest import require_miniature_xs


def _words(texts):
  """A stand-in tokenizer: one piece per word (the book only counts pieces)."""
  return [t.split() for t in texts]


def _entries(n=120):
  """Entries with known classes, etymologies and unique definitions (letters-only words)."""
  pos = ["n.", "v. t.", "a.", "adv."]
  languages = ["[L. x]", "[F. x]", "[AS. x]", "[Gr. x]"]
  raw = {}
  for i in range(n):
    word = "w" + "".join("abcdefghij"[int(d)] for d in f"{i:04d}")
    raw[word] = {"pos": [{"etymology": f"{languages[i % 4]} {i}", "part_of_speech": pos[i % 4],
                          "definitions": [{"text": f"Something meaning {word[1:]} kind {i}."
                                                   + (" Of a longer sort." if i % 3 else ""),
                                           "examples": []}]}]}
  return gcide.clean(raw)


def _slice_entries(count=80):
  """A few KB of the installed dictionary, cleaned (words from one letter, file order)."""
  with open(os.path.join(gcide.data_dir(), "words_Q.json")) as f:
    raw = json.load(f)
  keys = list(raw)[200:200 + count]
  return gcide.clean({k: raw[k] for k in keys})


def test_questions_come_from_held_out_entries_only_with_splits_disjoint_by_headword():
  entries = _entries()
  held = tuple(sorted(entries)[::2])
  book = dq.build(entries, held, _words, log=lambda line: None)
  assert len(book.passages) == len(entries)  # every sense, held out or not, is in the store
  heads = {s: {q["headword"] for q in rows} for s, rows in book.questions.items()}
  assert all(heads.values()), {s: len(h) for s, h in heads.items()}
  assert not heads["train"] & heads["validation"] and not heads["train"] & heads["test"]
  assert not heads["validation"] & heads["test"]
  assert set().union(*heads.values()) <= set(held)
  for split, rows in book.questions.items():
    assert all(gcide.task_split_of(q["headword"]) == split for q in rows)
  assert {q["form"] for rows in book.questions.values() for q in rows} == set(dq.FORMS)
  assert dq.build(entries, held, _words, log=lambda line: None) == book  # deterministic


def test_every_gold_passage_holds_its_answer_on_the_dictionary():
  entries = _slice_entries()
  held = tuple(sorted(entries))
  book = dq.build(entries, held, _words, log=lambda line: None)
  text = {p["id"]: p["text"] for p in book.passages}
  rows = [q for rows in book.questions.values() for q in rows]
  assert {q["form"] for q in rows} == set(dq.FORMS), [q["form"] for q in rows]
  for q in rows:
    assert q["gold"] and all(i.startswith(q["headword"] + "#") for i in q["gold"]), q
    for i in q["gold"]:
      passage = text[i]
      assert passage.startswith(q["headword"] + " "), (q, passage)
      if q["form"] == "pos":
        tag = re.match(re.escape(q["headword"]) + r" \(([^)]*)\)", passage).group(1)
        assert tag in gcide.POS_CLASSES[q["answer"]], (q, passage)
      elif q["form"] == "etymology":
        assert gcide.language_of(passage) == q["answer"], (q, passage)
      else:
        assert q["answer"] == q["headword"] and q["question"].startswith("word meaning ")
        asked = q["question"].split()[2:]
        assert len(asked) >= 2 and all(w in passage.lower() for w in asked), (q, passage)
        assert q["answer"] not in q["question"]


def test_recall_at_k_on_a_hand_made_store():
  top = np.array([[3, 1, 2], [0, 4, 1], [2, 0, 4]])
  gold = [[1], [2, 9], [2, 4]]
  # Question 0 finds its passage second; question 1 never; question 2 first.
  assert dq.recall_at_k(top, gold, (1, 2, 3)) == pytest.approx(
      {1: 100 / 3, 2: 200 / 3, 3: 200 / 3})
  from prompt_tuning.retrieval import bm25, store
  st = store.PassageStore([store.Passage(str(i), t) for i, t in enumerate([
      "apple (n.) A red fruit of the orchard.", "banana (n.) A long yellow fruit.",
      "carrot (n.) An orange root eaten raw.", "daisy (n.) A white flower of the meadow.",
      "eagle (n.) A large bird of prey."])])
  found, _ = bm25.BM25Retriever(st).retrieve(["yellow fruit", "bird prey", "red fruit", "meadow"],
                                             3)
  assert dq.recall_at_k(found, [[1], [4], [0], [2]], (1, 3)) == {1: 75.0, 3: 75.0}


def test_a_store_whose_passages_exceed_the_budget_says_how_many_were_cut_or_refuses():
  entries = _entries(40)
  calls = []

  def encode(texts):
    calls.append(len(texts))
    return _words(texts)

  full = {f"{w}#0.0": dq.passage_text(w, e.senses[0], e.senses[0].definitions[0])
          for w, e in entries.items()}
  long_ids = {i for i, text in full.items() if len(text.split()) > 10}
  assert 0 < len(long_ids) < len(entries)
  with pytest.raises(ValueError, match=rf"^open book: {len(long_ids)} of 40 passages are longer "
                                       r"than 10 pieces .*refused"):
    dq.build(entries, tuple(entries), encode, passage_tokens=10, long_passages="refuse")
  assert calls == [40]  # refused after measuring, before cutting or asking anything
  lines = []
  book = dq.build(entries, tuple(entries), _words, passage_tokens=10, log=lines.append)
  assert book.cut == len(long_ids) and len(lines) == 1
  assert lines[0].startswith(f"open book: {len(long_ids)} of 40 passages were longer than 10 "
                             "pieces")
  for p in book.passages:
    assert len(p["text"].split()) <= 10
    assert (p["text"] == full[p["id"]]) == (p["id"] not in long_ids)
  questions = [q for rows in book.questions.values() for q in rows]
  assert questions and not any(set(q["gold"]) & long_ids for q in questions)
  with pytest.raises(ValueError, match="long_passages='trim'; expected one of"):
    dq.build(entries, tuple(entries), _words, long_passages="trim")


def test_a_reranker_asked_to_keep_more_than_it_retrieves_is_one_line():
  with pytest.raises(ValueError, match=r"^a re-ranker asked to keep 20 of 5 retrieved passages"):
    dq.check_reader(5, 20)
  with pytest.raises(ValueError, match="caches BM25's top 20"):
    dq.check_reader(50, 5)
  dq.check_reader(20, 5)
  for mode, (retrieved, read) in dq.READERS.items():
    dq.check_reader(retrieved, read)
    assert mode == (f"k{read}" if read == retrieved else f"rerank{read}of{retrieved}")


def test_every_mode_is_registered_for_the_miniature():
  import seqio
  import prompt_tuning.tasks  # noqa: F401  registers the miniature's tasks
  names = set(seqio.TaskRegistry.names())
  assert {f"miniature_open_book_{m}" for m in
          ("closed", "oracle", "k1", "k5", "k20", "rerank5of20")} <= names


def test_the_registered_tasks_read_a_prepared_book_from_a_dictionary_slice(tmp_path):
  """End to end on 80 entries: corpus and vocabulary, book (cached), the tasks' inputs."""
  from prompt_tuning.tasks import miniature
  folder = tmp_path / "gcide"
  folder.mkdir()
  with open(os.path.join(gcide.data_dir(), "words_Q.json")) as f:
    raw = json.load(f)
  with open(folder / "words_Q.json", "w") as f:
    json.dump({k: raw[k] for k in list(raw)[200:280]}, f)
  spec = miniature.CorpusSpec(seed=0, pieces=200, folder=str(folder), held_out_fraction=0.5)
  cache = str(tmp_path / "cache")
  corpus = miniature.prepare(spec, cache, log=lambda line: None)
  # Not built yet: the tasks' reader names the command that builds it.
  with pytest.raises(miniature.NotMade, match=r"is missing: build it with `python -m "
                     r"prompt_tuning.miniature book`"):
    dq.prepared(corpus)
  book = dictionary_book.prepare(corpus, log=lambda line: None)
  assert dq.prepared(corpus).path == book.path
  assert book.path == dq.book_dir(corpus) and os.path.basename(book.path).endswith(
      dq.book_key(0))
  record = book.record()
  assert record["passages"] == len(book.passages) > 80
  k = min(dq.MAX_RETRIEVED, len(book.passages))
  rows = book.questions("train")
  assert rows and book.top("train").shape == (len(rows), k)
  recall = record["recall_at_k"]["train"]["all"]
  assert recall == pytest.approx({str(x): v for x, v in dq.recall_at_k(
      book.top("train"), book.gold_positions("train"), [1, 5, 20]).items()})
  # Cached: no work.
  assert dictionary_book.prepare(corpus, log=lambda line: 1 / 0).path == book.path
  miniature.register("obtest", spec, cache)
  import seqio
  vocab = corpus.vocabulary()
  for mode, width in (("closed", dq.QUESTION_TOKENS + 1), ("oracle", dq.SEGMENT_LENGTH),
                      ("k5", 5 * dq.SEGMENT_LENGTH), ("rerank5of20", 20 * dq.SEGMENT_LENGTH)):
    task = seqio.get_mixture_or_task(dq.task_name("obtest", mode))
    ex = next(task.source.get_dataset("train").as_numpy_iterator())
    assert ex["inputs"].shape == (width,), mode
    first = vocab.decode(ex["inputs"][:dq.SEGMENT_LENGTH].tolist())
    # (The slice's 200-piece vocabulary has no ':'; the miniature's has.)
    assert first.startswith("question") and rows[0]["question"] in first, (mode, first)
    assert ("context" in first) == (mode != "closed"), (mode, first)
    if mode == "oracle":
      assert rows[0]["headword"] in first.split("context")[1]
    assert ex["targets"].decode() == rows[0]["answer"]


def test_the_benchmarks_quick_mode_runs_every_method_and_writes_the_claims(tmp_path):
  """`benchmarks/open_book.py --quick` on the cached `xs` backbone, the cheapest to
  set up (skipped, with the one line naming the command, where the miniature is
  not made)."""
  require_miniature_xs()
  from benchmarks import open_book
  from benchmarks.research import stats
  with pytest.raises(SystemExit):  # an unknown method is refused before any work
    open_book.main(["--quick", "--methods", "frozen reader k=50", "--out", str(tmp_path)])
  assert not os.listdir(tmp_path)
  res = open_book.main(["--quick", "--size", "xs", "--out", str(tmp_path)])
  assert set(res["methods"]) == set(open_book.METHODS)
  for name, entry in res["methods"].items():
    assert len(entry["values"]) == len(entry["correct"]) == 2, name
    assert all(len(c) == res["test_questions"] == 16 for c in entry["correct"])
    assert [100.0 * c.count("1") / 16 for c in entry["correct"]] == pytest.approx(entry["values"])
  params = {n: e["trainable_parameters"] for n, e in res["methods"].items()}
  width = 16  # xs: configs/models/miniature_xs.gin
  assert params["frozen reader k=5"] == params["closed-book prompt tuning"] == open_book.P * width
  assert params["frozen reader, re-ranked 5 of 20"] > params["frozen reader k=5"]
  assert params["fine-tuned FiD reader k=5"] == 268_528  # every weight of xs
  assert [c["claim"] for c in res["claims"]][0].startswith(open_book.CLAIM)
  assert all(stats.is_verdict(c["verdict"]) for c in res["claims"])
  assert all(c["verdict"].startswith("not testable here: 2 seeds") for c in res["claims"])
  text = open(tmp_path / "open_book_quick.md").read()
  assert "| fine-tuned FiD reader k=5 |" in text and "## Claims" in text
  assert json.load(open(tmp_path / "open_book_quick.json"))["recall_at_k"] == res["recall_at_k"]


def test_a_frozen_readers_store_with_passages_longer_than_a_segment_is_one_line(tmp_path,
                                                                               caplog):
  """The generic open-book task (retrieval/tasks.py): its store is measured at registration."""
  import logging
  import seqio
  from prompt_tuning.retrieval import tasks
  texts = ["amara lives in oslo", "bento works at a bakery " * 2, "dalia " * 10]
  passages = tmp_path / "passages.jsonl"
  passages.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                              for i, t in enumerate(texts)))
  questions = tmp_path / "train.jsonl"
  questions.write_text(json.dumps({"question": "where does amara live", "answer": "oslo"}) + "\n")
  # 48 bytes less EOS less the template's 20 ("question:  context: ") leave 27: two are longer.
  with pytest.raises(ValueError, match=r"^open_book_task pt_obqa_long: 2 of 3 passages of .* "
                                       r"longer than the 27 tokens .*longest 60.*refused") as e:
    tasks.open_book_task("pt_obqa_long", {"train": str(questions)}, str(passages),
                         num_passages=1, segment_length=48, long_passages="refuse")
  assert "\n" not in str(e.value) and "pt_obqa_long" not in seqio.TaskRegistry.names()
  with caplog.at_level(logging.WARNING, logger="prompt_tuning.retrieval.tasks"):
    tasks.open_book_task("pt_obqa_long", {"train": str(questions)}, str(passages),
                         num_passages=1, segment_length=48)
  lines = [r.getMessage() for r in caplog.records if "pt_obqa_long" in r.getMessage()]
  assert len(lines) == 1 and "2 of 3 passages" in lines[0] and "cut" in lines[0], lines
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="prompt_tuning.retrieval.tasks"):
    tasks.open_book_task("pt_obqa_long", {"train": str(questions)}, str(passages),
                         num_passages=1, segment_length=128)
  assert not caplog.records  # every passage fits
  with pytest.raises(ValueError, match="long_passages='drop'; expected one of"):
    tasks.open_book_task("pt_obqa_long", {"train": str(questions)}, str(passages),
                         num_passages=1, long_passages="drop")
