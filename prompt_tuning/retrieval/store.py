"""A passage store read from local JSON Lines or TSV files.

JSON Lines: one object per line with a "text" field and optionally "id" and
"title". TSV: a header row naming the same fields. Passages keep file order;
an id defaults to the passage's position.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence, Union

from prompt_tuning.tasks import local_files


@dataclasses.dataclass(frozen=True)
class Passage:
  id: str
  text: str
  title: str = ""

  @property
  def contents(self) -> str:
    """What is indexed and read: the title (if any) then the text."""
    return f"{self.title}. {self.text}" if self.title else self.text


class PassageStore:
  """Passages in order, with lookup by id."""

  def __init__(self, passages: Sequence[Passage], source: str = "<memory>"):
    if not passages:
      raise ValueError(f"Passage store {source} holds no passages; expected JSON Lines objects "
                       "(or TSV rows under a header) with a 'text' field")
    self.passages = list(passages)
    self.source = source
    self._index = {p.id: i for i, p in enumerate(self.passages)}
    if len(self._index) != len(self.passages):
      raise ValueError(f"Passage store {source} repeats passage ids")

  def __len__(self) -> int:
    return len(self.passages)

  def __getitem__(self, i: int) -> Passage:
    return self.passages[i]

  def position(self, passage_id: str) -> int:
    return self._index[passage_id]

  @classmethod
  def from_files(cls, paths: Union[str, Sequence[str]]) -> "PassageStore":
    """Reads one or more .jsonl / .tsv files, in order."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    passages = []
    for path in paths:
      for n, row in enumerate(local_files.read_records(path), 1):
        if "text" not in row:
          raise ValueError(f"{path} record {n} has no 'text' field; it has {sorted(row)}")
        passages.append(Passage(id=str(row.get("id", len(passages))), text=str(row["text"]),
                                title=str(row.get("title", ""))))
    return cls(passages, source=", ".join(os.path.abspath(p) for p in paths) or "<no files>")
