"""Frozen readers: passage store, BM25 retriever, Fusion-in-Decoder reading, binaries."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import trees as tree_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.retrieval import bm25, reader, store, tasks
from prompt_tuning.runtime import setup as setup_lib
from prompt_tuning.runtime.specs import ModelSpec
from prompt_tuning.runtime import freezing
from tests.toy_runs import CFG, exported, run_binary, summary, toy_batch, train_in_process
from tests.test_binaries import t5x_fixture_digest

pytest.importorskip("bm25s")

FACTS = [("amara", "lives in", "kolu"), ("bento", "lives in", "pirat"),
         ("amara", "works at", "the mill"), ("cosi", "lives in", "derun"),
         ("bento", "works at", "the dock"), ("dalia", "lives in", "moru")]


def _write_store(tmp_path, fmt="jsonl"):
  path = tmp_path / f"passages.{fmt}"
  if fmt == "jsonl":
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": f"{w} {r} {o}"}) + "\n"
                            for i, (w, r, o) in enumerate(FACTS)))
  else:
    path.write_text("id\ttext\n" + "".join(f"p{i}\t{w} {r} {o}\n"
                                            for i, (w, r, o) in enumerate(FACTS)))
  return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_the_retriever_returns_the_planted_passage_first(tmp_path, fmt):
  retriever = bm25.BM25Retriever(store.PassageStore.from_files(_write_store(tmp_path, fmt)))
  questions = ["where bento lives in", "where amara works at", "where dalia lives in"]
  top, scores = retriever.retrieve(questions, k=3)
  assert top.shape == scores.shape == (3, 3)
  assert [retriever.store[i].id for i in top[:, 0]] == ["p1", "p2", "p5"]
  assert np.all(np.diff(scores, axis=1) <= 0)
  recall = bm25.recall_at_k(retriever, questions, [1, 2, 5], ks=(1, 3))
  assert recall == {1: 1.0, 3: 1.0}


def test_an_empty_store_and_k_beyond_the_store_are_one_clear_line(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(ValueError, match=r"holds no passages") as e:
    store.PassageStore.from_files(str(empty))
  assert "\n" not in str(e.value)
  retriever = bm25.BM25Retriever(store.PassageStore.from_files(_write_store(tmp_path)))
  with pytest.raises(ValueError, match=r"k=7 passages asked of a store of 6 passages") as e:
    retriever.retrieve(["where does amara live"], k=7)
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match=r"k=7 passages asked of a store of 6"):
    tasks.open_book_task("pt_obqa_too_many", {"train": str(empty)}, _write_store(tmp_path),
                         num_passages=7)


def _fid(k=3, n=0, p=2):
  prompt = reader.RetrievalPrompt(length=p, rerank_width=8)
  return ModelSpec(CFG, encoder_prompt=prompt, model_class=lambda cfg, **kw: (
      reader.FusionInDecoderT5(cfg, num_passages=k, num_candidates=n, **kw)))


def test_fused_passages_shapes_masks_and_each_segment_encoded_alone():
  k, s, p = 3, 5, 2
  spec = _fid(k, p=p)
  built = setup_lib.build(spec)
  params = freezing.merge(built.trainable, built.frozen)
  rng = np.random.RandomState(0)
  segs = np.zeros((2, k, s), np.int32)
  for b in range(2):
    for i in range(k):
      n = rng.randint(1, s + 1)
      segs[b, i, :n] = rng.randint(3, 60, n)
  tokens = jnp.asarray(segs.reshape(2, k * s))
  enc, mask = built.model.apply({"params": params}, tokens, method=built.model.encode)
  assert enc.shape == (2, k * (p + s), CFG.emb_dim) and mask.shape == (2, k * (p + s))
  expected_mask = np.concatenate([np.ones((2, k, p), bool), segs > 0], axis=2).reshape(2, -1)
  np.testing.assert_array_equal(np.asarray(mask), expected_mask)
  plain = T5(CFG, encoder_prompt=spec.encoder_prompt)
  for i in range(k):
    alone, _ = plain.apply({"params": params}, jnp.asarray(segs[:, i]), method=plain.encode)
    np.testing.assert_allclose(np.asarray(enc[:, i * (p + s):(i + 1) * (p + s)]),
                               np.asarray(alone), rtol=1e-5, atol=1e-5)
  # The decoder reads every passage: changing the last one changes the logits.
  dec = jnp.zeros((2, 2), jnp.int32)
  logits = built.model.apply({"params": params}, tokens, dec)
  other = segs.copy()
  other[:, -1, 0] = 61
  logits2 = built.model.apply({"params": params}, jnp.asarray(other.reshape(2, -1)), dec)
  assert not np.allclose(np.asarray(logits), np.asarray(logits2))
  with pytest.raises(ValueError, match="cannot hold 3 equal segments"):
    built.model.apply({"params": params}, tokens[:, :-1], dec)


def _fid_batch(n_seg, s=4, n=8, seed=0):
  batch = toy_batch(n, seed)
  enc = np.asarray(batch["encoder_input_tokens"])
  segs = np.zeros((n, n_seg, s), np.int32)
  segs[:, 0, :enc.shape[1]] = enc  # the passage holding the answer
  rng = np.random.RandomState(seed + 1)
  segs[:, 1:, :3] = rng.randint(10, 40, (n, n_seg - 1, 3))
  segs[:, 1:, 3] = 1
  return dict(batch, encoder_input_tokens=jnp.asarray(segs.reshape(n, -1)))


def test_only_the_prompt_and_reranker_train_and_the_reader_learns():
  spec = _fid(k=2, n=3)
  s, trained, losses = train_in_process(spec, _fid_batch(3), steps=30, lr=0.1)
  assert losses[-1] < 0.9 * losses[0], losses[::10]
  keys = set(tree_lib.flatten(trained))
  assert keys == {"encoder_prompt/prompt", "encoder_prompt/rerank_hidden/kernel",
                  "encoder_prompt/rerank_score/kernel"}
  before = tree_lib.flatten(s.trainable)
  assert all(not np.array_equal(before[k], v) for k, v in tree_lib.flatten(trained).items())


def test_frozen_reader_through_train_eval_and_infer(tmp_path):
  """configs/prompts/frozen_reader.gin + tasks/open_book.gin through the binaries:
  the prompt trains, the backbone stays bit-identical to the checkpoint, eval
  writes exact_match and infer writes a prediction per question."""
  passages = _write_store(tmp_path)
  qa = [{"question": f"where {w} {r}", "answer": o}
        for w, r, o in FACTS]
  for split in ("train", "validation"):
    (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa * 2))
  lines = ["include 'prompts/frozen_reader.gin'", "PROMPT_LENGTH = 2", "NUM_PASSAGES = 2"]
  task = ["--gin_file=tasks/open_book.gin", "--gin.open_book_task.name='pt_test_obqa'",
          f"--gin.open_book_task.splits={{'train': '{tmp_path}/train.jsonl', "
          f"'validation': '{tmp_path}/validation.jsonl'}}",
          f"--gin.open_book_task.passages='{passages}'", "--gin.SEGMENT_LENGTH=48",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 8}", "--gin.BATCH_SIZE=4"]
  code = run_binary("train", tmp_path, lines, "runs/prompt_finetune.gin", *task,
                    "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=1",
                    "--gin.ReportSpec.frozen_digest=True", "--gin.train.optimizer=@optax.adam()",
                    "--gin.optax.adam.learning_rate=0.05")
  assert code == 0
  run = tmp_path / "run"
  assert summary(run)["frozen_sha256"] == t5x_fixture_digest()
  first, last = exported(run, 1), exported(run, 2)
  assert list(last) == ["encoder_prompt.prompt.npy"]
  assert not np.array_equal(first["encoder_prompt.prompt.npy"], last["encoder_prompt.prompt.npy"])
  for command, run_file in (("eval", "runs/prompt_eval.gin"), ("infer", "runs/prompt_infer.gin")):
    assert run_binary(command, tmp_path, lines, run_file, *task,
                      "--gin.DecodingConfig.max_decode_length=4") == 0
  metrics = [json.loads(x) for x in open(run / "eval" / "metrics.jsonl")]
  assert "exact_match" in metrics[-1]
  infer_files = [os.path.join(d, f) for d, _, fs in os.walk(run / "infer") for f in fs]
  rows = [json.loads(x) for f in infer_files if f.endswith(".jsonl") for x in open(f)]
  assert len(rows) == 2 * len(FACTS) and rows[0]["input"] == qa[0]["question"]
