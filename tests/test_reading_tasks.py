"""The frozen reader's data: the reading skills of its backbone's pretraining, and
the open-book QA set it is scored on (a different format, held out)."""

import collections

import pytest
import seqio

import prompt_tuning.tasks  # noqa: F401  (registers)
from prompt_tuning.retrieval import synthetic as obqa
from prompt_tuning.tasks import reading, synthetic


def _parse(text):
  """(pairs as (key, value), asked key), read back from a lookup input."""
  listing, asked = text.split(" ? ")
  pairs = []
  for pair in listing.split(", "):
    words = pair.split(" ")
    pairs.append((" ".join(words[:-1]), words[-1]))
  return pairs, asked


def test_lookup_answers_the_asked_keys_value_and_fits_its_length():
  ex = reading.examples("lookup", "train", 400)
  distractors = 0
  for text, target in zip(ex["inputs"], ex["targets"]):
    pairs, asked = _parse(text)
    assert 2 <= len(pairs) <= 4 and len(text) + 1 <= reading.LOOKUP_LENGTHS["inputs"]
    keys = [k for k, _ in pairs]
    assert keys.count(asked) == 1 and dict(pairs)[asked] == target
    assert 3 <= len(target) <= 5 and target.isalpha()
    # A key sharing all but one word with the asked one, when the asked key has several.
    n = len(asked.split())
    distractors += any(k != asked and len(k.split()) == n and
                       sum(a == b for a, b in zip(k.split(), asked.split())) == n - 1
                       for k in keys) if n > 1 else 0
  assert distractors > 50
  # Letters beyond the synthetic words' a-h: the skill is copying any letter.
  assert set("".join(ex["targets"])) - set(synthetic.ALPHABET)


def test_lookup_splits_ask_disjoint_keys_and_are_deterministic():
  train = {_parse(x)[1] for x in reading.examples("lookup", "train", 2000)["inputs"]}
  valid = [_parse(x)[1] for x in reading.examples("lookup", "validation", 200)["inputs"]]
  assert not train & set(valid)
  assert (reading.examples("lookup", "validation", 20)
          == reading.examples("lookup", "validation", 20))
  train = set(reading.examples("tail", "train", 2000)["targets"])
  assert not train & set(reading.examples("tail", "validation", 200)["targets"])


def test_tail_answers_the_last_word_of_a_longer_input():
  ex = reading.examples("tail", "train", 400)
  counts = set()
  for text, target in zip(ex["inputs"], ex["targets"]):
    assert text.startswith("tail: ") and len(text) + 1 <= reading.FEATURE_LENGTHS["inputs"]
    words = text[len("tail: "):].split(" ")
    counts.add(len(words))
    assert target == words[-1] and target.isalpha() and 2 <= len(target) <= 5
  assert counts == {2, 3, 4, 5}
  assert set("".join(ex["targets"])) - set(synthetic.ALPHABET)


def test_reading_pretrain_mixes_the_synthetic_tasks_and_the_tail_only():
  names = {t.name for t in seqio.get_mixture_or_task("reading_pretrain").tasks}
  assert names == {f"synthetic_{t}" for t in synthetic.TASKS} | {"reading_tail"}
  # The other backbones' mixtures did not change (their cached backbones stay valid).
  assert ({t.name for t in seqio.get_mixture_or_task("synthetic_pretrain").tasks}
          == {f"synthetic_{t}" for t in synthetic.TASKS})
  assert not {"reading_tail", "reading_lookup"} & {
      t.name for t in seqio.get_mixture_or_task("research_pretrain").tasks}
  ds = seqio.get_mixture_or_task("reading_tail").get_dataset(
      reading.FEATURE_LENGTHS, split="validation", shuffle=False, num_epochs=1)
  ex = next(ds.as_numpy_iterator())
  text = ex["inputs_pretokenized"].decode()
  assert ex["inputs"].tolist() == [b + 3 for b in text.encode()] + [1]


def test_open_book_questions_need_their_passage_and_only_guess_the_prior():
  data = obqa.generate(num_passages=3000, num_train=600, num_validation=200)
  text = {p["id"]: p["text"] for p in data["passages"]}
  for q in data["train"] + data["validation"]:
    passage = text[q["passage_id"]]
    assert passage.endswith(" " + q["answer"])
    assert passage.startswith(q["question"]) or passage.split()[1:] == (
        q["question"].split() + [q["answer"]])  # last name only
    assert len(q["question"]) + 2 + len(passage) <= 32  # "{question}? {passage}"
  person = lambda q: " ".join(text[q["passage_id"]].split()[:2])  # noqa: E731
  assert not {person(q) for q in data["train"]} & {person(q) for q in data["validation"]}
  per_relation = collections.defaultdict(set)
  for q in data["train"]:
    per_relation[q["question"].split()[-1]].add(q["answer"])
  assert set(per_relation) == set(obqa.RELATIONS)
  assert all(len(v) == 8 for v in per_relation.values())


def test_a_longer_input_length_gets_its_own_cached_backbone_and_old_names_stay():
  from prompt_tuning import backbones
  old = backbones.backbone_path("/c", backbones.PretrainConfig())
  assert old == "/c/backbones/synthetic_small_seed0_steps3000_bs64"
  research = backbones.PretrainConfig(steps=1500, mixture="research_pretrain")
  assert backbones.backbone_path("/c", research).endswith("_bs64_research_pretrain")
  reader = backbones.PretrainConfig(steps=2000, mixture="reading_pretrain",
                                     inputs_length=reading.FEATURE_LENGTHS["inputs"])
  assert backbones.backbone_path("/c", reader).endswith("steps2000_bs64_reading_pretrain_in32")


def test_the_quickstarts_backbone_has_its_sizes_rate_and_a_folder_of_its_own():
  from prompt_tuning import backbones
  from prompt_tuning.cli import main as cli
  tiny = backbones.quickstart_pretrain_config()
  assert (tiny.size, tiny.steps, tiny.learning_rate, tiny.warmup_steps) == ("tiny", 3000, 2e-3, 100)
  small = backbones.quickstart_pretrain_config("small", seed=1, steps=50)
  assert (small.size, small.seed, small.steps, small.learning_rate, small.warmup_steps) == (
      "small", 1, 50, 1e-3, 200)
  # Another rate never reuses a backbone cached for the default one (and vice versa).
  same_shape = backbones.PretrainConfig(size="tiny", steps=3000)
  assert backbones.backbone_path("/c", tiny) != backbones.backbone_path("/c", same_shape)
  assert backbones.backbone_path("/c", tiny).endswith("steps3000_bs64_lr0.002_wu100")
  assert backbones.backbone_path("/c", small) == "/c/backbones/synthetic_small_seed1_steps50_bs64"
  # The command's defaults are the tiny backbone's.
  args = cli.build_parser().parse_args(["quickstart"])
  assert backbones.quickstart_pretrain_config(args.size, args.seed, args.pretrain_steps) == tiny
  with pytest.raises(ValueError, match="medium"):
    backbones.quickstart_pretrain_config("medium")
