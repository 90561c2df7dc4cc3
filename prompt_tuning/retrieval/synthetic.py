"""A synthetic open-book QA set: facts live only in a passage collection.

Each person (a made-up "first last" name of two 3-letter words) has one
passage per relation ("bak dos home tarun"); a question asks one relation of
one person ("bak dos home") and is answered by exactly one passage. Answers
come from a short list per relation (8 each), so a closed-book model can
guess only the prior. Validation questions are about people no training
question mentions: the reader must read, not remember. One question in four
names only the last name, which many people share: BM25 then has to pick among
them, so recall@k grows with k. Letters only, so the byte vocabulary of the
quickstart backbones spells everything, and short (a question and its passage
fit in 32 bytes), so the frozen reader can read 20 passages cheaply.

    python -m prompt_tuning.retrieval.synthetic --out /tmp/obqa --passages 10000
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

RELATIONS = {"home": ["tarun", "pelim", "dokar", "visel", "momba", "ruzan", "kelvo", "sardi"],
             "job": ["baker", "smith", "nurse", "judge", "clerk", "guard", "cook", "pilot"],
             "born": ["april", "may", "june", "july", "march", "dusk", "dawn", "noon"]}
# Name words are consonant-vowel-consonant: 980 of them, none an answer or a relation.
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def _names(count: int, rng: np.random.RandomState) -> list[str]:
  """Distinct "first last" names from two pools of about sqrt(2 * count) words each,
  so many people share a first or a last name."""
  pool = max(8, int(np.ceil(np.sqrt(2 * count))))
  words = sorted({rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS))
                  + rng.choice(list(_CONSONANTS)) for _ in range(4 * pool)})
  rng.shuffle(words)
  first, last = words[:pool], words[pool:2 * pool]
  seen: set[str] = set()
  while len(seen) < count:
    seen.add(f"{first[rng.randint(pool)]} {last[rng.randint(pool)]}")
  return sorted(seen)


def generate(num_passages: int = 10_000, num_train: int = 2000, num_validation: int = 200,
             seed: int = 0) -> dict[str, list[dict]]:
  """{'passages': [...], 'train': [...], 'validation': [...]} records."""
  rng = np.random.RandomState(seed)
  people = _names(-(-num_passages // len(RELATIONS)), rng)
  held_people = set(people[:len(people) // 5])  # validation people never in train
  # Store order is random: BM25 breaks ties by position, and a store in this order
  # would rank the held-out people (the first fifth) above their namesakes.
  rng.shuffle(people)
  passages, facts = [], []
  for person in people:
    for relation, answers in RELATIONS.items():
      if len(passages) == num_passages:
        break
      answer = answers[rng.randint(len(answers))]
      facts.append((person, relation, answer, len(passages)))
      passages.append({"id": f"p{len(passages)}", "text": f"{person} {relation} {answer}"})
  order = rng.permutation(len(facts))

  def questions(pool, count):
    return [{"question": f"{f[0] if rng.rand() < 0.75 else f[0].split()[1]} {f[1]}",
             "answer": f[2], "passage_id": f"p{f[3]}"} for f in pool[:count]]
  train = [facts[i] for i in order if facts[i][0] not in held_people]
  valid = [facts[i] for i in order if facts[i][0] in held_people]
  return {"passages": passages, "train": questions(train, num_train),
          "validation": questions(valid, num_validation)}


def write(out_dir: str, **kwargs) -> dict[str, str]:
  """Writes passages.jsonl, train.jsonl and validation.jsonl; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for name, rows in generate(**kwargs).items():
    paths[name] = os.path.join(out_dir, f"{name}.jsonl")
    with open(paths[name], "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return paths


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--passages", type=int, default=10_000)
  parser.add_argument("--train", type=int, default=2000)
  parser.add_argument("--validation", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  print(json.dumps(write(args.out, num_passages=args.passages, num_train=args.train,
                         num_validation=args.validation, seed=args.seed)))


if __name__ == "__main__":
  main()
