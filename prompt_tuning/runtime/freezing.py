"""Which parameters train: a first-match table of regexes over '/'-joined paths.

    rules = [(PROMPT_PARAM_PATTERN, True), (".*", False)]  # prompt tuning
    rules = [(".*", True)]                                  # full fine-tuning

Every leaf must be matched by some rule and every rule must match some leaf
(a typo is an error, never a silent mis-freeze). The tree is then split into a
trainable and a frozen subtree; gradients and optimizer state exist only for
the trainable one.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from prompt_tuning import registry
from prompt_tuning import trees as tree_lib
from prompt_tuning.prompts import base as prompt_base

Rules = Sequence[tuple[str, bool]]
PROMPT_TUNING_RULES: Rules = ((prompt_base.PROMPT_PARAM_PATTERN, True), (r".*", False))
FULL_FINETUNING_RULES: Rules = ((r".*", True),)


FROZEN_RULES: Rules = ((r".*", False),)
# IA3's vectors (prompts/ia3.py), wherever the prompt module nests them; with
# IA3_RULES they alone train (e.g. IA3 on top of a frozen, already trained
# soft prompt). PROMPT_TUNING_RULES trains them along with any prompt.
IA3_PARAM_PATTERN = (r"encoder_prompt/(.*/)?(encoder|decoder)_"
                     r"(self_attention_key|self_attention_value|cross_attention_key|"
                     r"cross_attention_value|mlp)")
IA3_RULES: Rules = ((IA3_PARAM_PATTERN, True), (r".*", False))
registry.constant("PROMPT_TUNING_RULES", tuple(PROMPT_TUNING_RULES))
registry.constant("FULL_FINETUNING_RULES", tuple(FULL_FINETUNING_RULES))
registry.constant("IA3_RULES", tuple(IA3_RULES))


@registry.configurable
def prompt_or_full_rules(train_backbone: bool = False) -> Rules:
  """PROMPT_TUNING_RULES, or FULL_FINETUNING_RULES when `train_backbone` (a gin
  switch, e.g. HyperPrompt's paper setting, where everything trains)."""
  return tuple(FULL_FINETUNING_RULES if train_backbone else PROMPT_TUNING_RULES)


def trainable_mask(params: Mapping[str, Any], rules: Rules,
                   require_trainable: bool = True) -> dict[str, bool]:
  """{'/'-joined path: trainable?}, checking coverage both ways.

  `require_trainable=False` accepts an all-frozen model (inference only).
  """
  compiled = [(re.compile(pattern), bool(train), pattern) for pattern, train in rules]
  paths = list(tree_lib.flatten(params))
  used = set()
  mask = {}
  for path in paths:
    for i, (regex, train, _) in enumerate(compiled):
      if regex.fullmatch(path):
        mask[path] = train
        used.add(i)
        break
    else:
      raise ValueError(f"Parameter {path} is matched by no freezing rule "
                       f"{[p for _, _, p in compiled]}; add a rule (e.g. ('.*', False))")
  unmatched = [p for i, (regex, _, p) in enumerate(compiled)
               if i not in used and not any(regex.fullmatch(x) for x in paths)]
  if unmatched:
    raise ValueError(f"Freezing rule(s) {unmatched} match no parameter; parameters look like "
                     f"{paths[:4]}")
  if require_trainable and not any(mask.values()):
    raise ValueError(f"Freezing rules {[p for _, _, p in compiled]} leave nothing trainable")
  return mask


def split(params: Mapping[str, Any], mask: Mapping[str, bool]) -> tuple[dict, dict]:
  """(trainable subtree, frozen subtree), both nested dicts."""
  flat = tree_lib.flatten(params)
  return (tree_lib.unflatten({k: v for k, v in flat.items() if mask[k]}),
          tree_lib.unflatten({k: v for k, v in flat.items() if not mask[k]}))


def merge(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
  """The full parameter tree from its two parts."""
  flat = tree_lib.flatten(frozen)
  overlap = set(flat) & set(tree_lib.flatten(trainable))
  if overlap:
    raise ValueError(f"Parameters both trainable and frozen: {sorted(overlap)}")
  flat.update(tree_lib.flatten(trainable))
  return tree_lib.unflatten(flat)
