"""What the research suite runs: the `Suite` settings and their two presets."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional


class SuiteError(RuntimeError):
  """A figure that cannot separate methods, or a stage that could not run."""


@dataclasses.dataclass(frozen=True)
class Suite:
  """What the suite runs. `FULL` and `QUICK` below are the two presets."""
  sizes: tuple[str, ...] = ("tiny", "small", "medium")
  pretrain_steps: tuple[tuple[str, int], ...] = (("tiny", 2000), ("small", 1500),
                                                 ("medium", 1500))
  seeds: tuple[int, ...] = (0, 1, 2)
  # Prompt tuning's steps (the paper trains far longer; these are sized for
  # two CPU cores, and chosen so that no task saturates).
  steps: int = 300
  finetune_steps: int = 300
  batch_size: int = 32
  prompt_length: int = 10
  lengths: tuple[int, ...] = (1, 3, 10, 30)
  eval_examples: int = 256
  # The classification format (its prompts are also the recycling experiment's
  # sources on the seed-0 backbones) and the generation format.
  scale_tasks: tuple[str, ...] = ("research_sorted_bare", "research_reverse_bare")
  init_task: str = "research_sorted_bare"
  length_task: str = "research_compose_bare"
  # Every method of the library on one held-out format, and the task-aware
  # ones on the multi-task mixture (size: sizes[0]).
  methods_task: str = "research_compose_bare"
  multitask_task: str = "research_marked_multitask"
  # ATTEMPT's source prompts: plain prompts on the bare formats of the two
  # skills the composition is made of (sort, then reverse).
  attempt_sources: tuple[str, ...] = ("synthetic_sort_bare_indexed", "synthetic_reverse_bare")
  # Recycling (Lester et al. 2022): every ordered pair of the backbones
  # sizes x backbone_seeds, prompts trained on a classification task.
  backbone_seeds: tuple[int, ...] = (0, 1)
  recycle_task: str = "research_sorted_bare"
  recycle_prompt_seeds: tuple[int, ...] = (0, 1)
  # linear_combination is left out: with the exact minimum-norm least-squares fit
  # it is the same map as linear (both p S+ T; tests/test_recycling.py).
  recycle_methods: tuple[str, ...] = ("linear", "mlp")
  # The quick run's smoke test: only these methods (name prefixes; None: all),
  # and these seeds for every experiment but scale (None: `seeds`).
  method_subset: Optional[tuple[str, ...]] = None
  method_seeds: Optional[tuple[int, ...]] = None
  # The full run refuses a figure that cannot separate methods; the quick run
  # (20 steps: scores near 0 are expected) lists such figures instead.
  refuse_inseparable: bool = True

  @property
  def seeds_of_methods(self) -> tuple[int, ...]:
    return self.method_seeds or self.seeds

  def keeps(self, method: Any) -> bool:
    """Whether the quick run's subset keeps `method` (a runs.Method)."""
    return self.method_subset is None or method.name.startswith(self.method_subset)

  def pretrain_steps_of(self, size: str) -> int:
    return dict(self.pretrain_steps)[size]


FULL = Suite()
# Every stage once, on one task: what the test suite runs.
QUICK = Suite(sizes=("tiny",), pretrain_steps=(("tiny", 150),), steps=20, finetune_steps=20,
              lengths=(1, 10), eval_examples=32, scale_tasks=("research_sorted_bare",),
              length_task="research_sorted_bare", methods_task="research_sorted_bare",
              recycle_prompt_seeds=(0,), recycle_methods=("linear",),
              method_subset=("prompt tuning (", "ATTEMPT", "multi-task", "HyperPrompt", "ID-PT"),
              method_seeds=(0,), refuse_inseparable=False)



def suite_of(results: dict[str, Any]) -> Suite:
  """The Suite a results file was made with (its `suite` entry; JSON made the tuples lists)."""
  def tuples(value):
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value
  return Suite(**{k: tuples(v) for k, v in results["suite"].items()})
