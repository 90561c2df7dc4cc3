"""The support vocabulary that recyclers are fitted on.

The prompt-recycling paper fits its maps on tokens both models know well: from
a filter file of English-only pieces ({id: piece}), skip the first N ids (the
most frequent, often special) and take the next M (defaults 1000 and 4000).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np


def load_filter(path: str) -> list[int]:
  """Sorted token ids of a `{id: piece}` JSON filter file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Vocabulary filter file not found: {path}")
  try:
    with open(path) as f:
      mapping = json.load(f)
    return sorted(int(k) for k in mapping)
  except (ValueError, TypeError, AttributeError) as e:
    raise ValueError(f"{path} is not a {{token id: piece}} JSON object: {e}") from e


def support_ids(vocab_sizes: Sequence[int], filter_ids: Optional[Sequence[int]] = None,
                skip: int = 1000, take: Optional[int] = 4000) -> np.ndarray:
  """Token ids to fit a recycler on, valid for every model's embedding table.

  Args:
    vocab_sizes: the embedding rows of the source and target models.
    filter_ids: candidate ids (e.g. from `load_filter`); None means all ids
      the models share.
    skip, take: drop the first `skip` candidates, keep the next `take` (None:
      all the rest).
  """
  limit = min(vocab_sizes)
  candidates = np.arange(limit) if filter_ids is None else np.asarray(sorted(filter_ids))
  bad = candidates[(candidates < 0) | (candidates >= limit)]
  if bad.size:
    raise ValueError(f"Support vocabulary id(s) {bad[:5].tolist()} out of range: the models' "
                     f"embedding tables have {list(vocab_sizes)} rows, so ids must be in "
                     f"[0, {limit})")
  chosen = candidates[skip:] if take is None else candidates[skip:skip + take]
  if take is not None and chosen.size < take:
    raise ValueError(f"Support vocabulary: only {chosen.size} ids left after skipping {skip} "
                     f"of {candidates.size}; expected {take}")
  return chosen
