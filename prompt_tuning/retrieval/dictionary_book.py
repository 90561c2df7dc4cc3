"""The dictionary's open book, built: the passage store of every sense, BM25's index,
each question's top passages and recall@k (`prepare`), cached beside the corpus.

The data (passages, questions, splits) and the seqio tasks that read a built
book are `prompt_tuning.tasks.dictionary_qa`; building it needs BM25, which
lives here, a layer above the tasks. `python -m prompt_tuning.miniature book`
runs `prepare` on the miniature's corpus.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from prompt_tuning.retrieval import bm25
from prompt_tuning.retrieval import store as store_lib
from prompt_tuning.tasks import dictionary_qa as dq
from prompt_tuning.tasks import gcide


def prepare(corpus, log=print, long_passages: str = "cut") -> "dq.Book":
  """Makes (or finds cached) the book: store, questions, BM25 index, each split's
  top MAX_RETRIEVED and recall@1/5/20 (book.json); about a minute the first time."""
  path = dq.book_dir(corpus)
  if os.path.exists(os.path.join(path, "DONE")):
    return dq.Book(path)
  import sentencepiece as spm
  processor = spm.SentencePieceProcessor(model_file=corpus.spm_path)
  entries = gcide.load_entries(corpus.spec.folder)
  book = dq.build(entries, corpus.held_out(), processor.encode, corpus.spec.seed,
                  long_passages=long_passages, log=log)
  work = path + ".partial"
  shutil.rmtree(work, ignore_errors=True)
  os.makedirs(work)
  dq.write_jsonl(os.path.join(work, "passages.jsonl"), book.passages)
  store = store_lib.PassageStore([store_lib.Passage(p["id"], p["text"]) for p in book.passages],
                                 source=os.path.join(path, "passages.jsonl"))
  retriever = bm25.BM25Retriever(store, **dq.BM25_PARAMS)
  retriever.save(os.path.join(work, "index"))
  k = min(dq.MAX_RETRIEVED, len(store))
  recall = {}
  for split, rows in book.questions.items():
    dq.write_jsonl(os.path.join(work, f"{split}.jsonl"), rows)
    top = (retriever.retrieve([r["question"] for r in rows], k)[0] if rows
           else np.zeros((0, k), np.int64))
    np.save(os.path.join(work, f"top_{split}.npy"), top.astype(np.int32))
    gold = [[store.position(i) for i in r["gold"]] for r in rows]
    ks = [x for x in (1, 5, 20) if x <= k]
    recall[split] = {form: {str(x): v for x, v in dq.recall_at_k(
        top[sel], [gold[i] for i in sel], ks).items()} if len(sel) else None
        for form in (*dq.FORMS, "all")
        for sel in [[i for i, r in enumerate(rows) if form in ("all", r["form"])]]}
  record = {"passages": len(book.passages), "cut": book.cut,
            "passage_tokens": dq.PASSAGE_TOKENS,
            "longest_before_cut": book.longest, "segment_length": dq.SEGMENT_LENGTH,
            "questions": {s: {f: sum(r["form"] == f for r in rows) for f in dq.FORMS}
                          for s, rows in book.questions.items()},
            "recall_at_k": recall, "key": dq.book_key(corpus.spec.seed)}
  with open(os.path.join(work, "book.json"), "w") as f:
    json.dump(record, f, indent=1)
  open(os.path.join(work, "DONE"), "w").close()
  shutil.rmtree(path, ignore_errors=True)
  os.rename(work, path)
  log(f"open book: {record['passages']} passages ({record['cut']} cut to {dq.PASSAGE_TOKENS} "
      f"pieces), questions {record['questions']}, validation recall@k "
      f"{recall['validation']['all']}")
  return dq.Book(path)
