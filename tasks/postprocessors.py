"""Postprocessors: decoded text (or a target) -> what the metrics compare.

seqio calls them as fn(text, example=..., is_target=...). An output the task
cannot read (a string that is no verbalizer, a non-number for STS-B) becomes a
value that is always wrong; it never raises.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

UNKNOWN_LABEL = -1
UNKNOWN_FLOAT = -1.0  # STS-B scores lie in [0, 5].


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Verbalizer:
  """Maps verbalizer strings back to label indices (-1 for anything else)."""

  def __init__(self, labels: Sequence[str]):
    self.labels = tuple(labels)
    self._index = {label: i for i, label in enumerate(self.labels)}

  def __call__(self, text: Any, example: Optional[Mapping[str, Any]] = None,
               is_target: bool = False) -> int:
    del example, is_target
    return self._index.get(_text(text).strip(), UNKNOWN_LABEL)

  def __repr__(self):
    return f"Verbalizer({self.labels})"


def string_to_float(text: Any, example=None, is_target: bool = False) -> float:
  del example, is_target
  try:
    return float(_text(text).strip())
  except ValueError:
    return UNKNOWN_FLOAT


def _group(example: Optional[Mapping[str, Any]]) -> str:
  if example is None or "group" not in example:
    raise ValueError("This task's postprocessor needs the example's 'group' feature")
  return _text(example["group"])


class GroupedLabel:
  """MultiRC: {group: question id, value: label index}."""

  def __init__(self, labels: Sequence[str]):
    self.verbalizer = Verbalizer(labels)

  def __call__(self, text, example=None, is_target=False) -> dict[str, Any]:
    return {"group": _group(example), "value": self.verbalizer(text)}


def record(text, example=None, is_target=False) -> dict[str, Any]:
  """ReCoRD: targets carry every gold answer; predictions their text."""
  if is_target:
    return {"group": _group(example), "answers": [_text(a) for a in example["answers"]]}
  return {"group": _group(example), "value": _text(text)}


def qa(text, example=None, is_target=False) -> Any:
  """Extractive QA: targets are the list of gold answers, predictions their text."""
  if is_target and example is not None and "answers" in example:
    return [_text(a) for a in example["answers"]]
  return _text(text)


def rank_candidate(text, example=None, is_target=False) -> tuple[str, bool]:
  """Rank classification: (example id, whether this candidate is the right label)."""
  del text, is_target
  if example is None or "rank_group" not in example:
    raise ValueError("Rank classification needs the 'rank_group' and 'is_correct' features")
  return _text(example["rank_group"]), bool(example["is_correct"])
