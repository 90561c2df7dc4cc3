"""Frozen readers (Levine et al. 2022, sec. 4): passage stores, BM25 retrieval,
Fusion-in-Decoder reading by a frozen T5, and open-book QA tasks.

  store.py   PassageStore: passages from local JSON Lines / TSV files
  bm25.py    BM25Retriever on the `bm25s` library; recall@k
  reader.py  RetrievalPrompt (soft prompt + optional re-ranker) and
             FusionInDecoderT5, the frozen reader
  tasks.py   open_book_task: a seqio task whose inputs are the top-k
             (question, passage) segments
"""
