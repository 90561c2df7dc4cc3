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
  # At least 5: with 5 runs a side an exact permutation test can reach p = 0.008
  # (with 3 it cannot go below 0.1).
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  # Prompt tuning's steps (the paper trains far longer; these are sized for
  # two CPU cores, and chosen so that no task saturates).
  steps: int = 300
  finetune_steps: int = 300
  batch_size: int = 32
  prompt_length: int = 10
  lengths: tuple[int, ...] = (1, 10, 30)
  # Selection by validation: checkpoints every steps / evaluations steps, each
  # scored on eval_examples validation examples; the best is scored on
  # test_examples examples of the held-out test split.
  evaluations: int = 3
  eval_examples: int = 256
  test_examples: int = 512
  # The byte ensembles' formats: classification (rank classification over
  # yes/no) and generation (reverse a bare word).
  scale_tasks: tuple[str, ...] = ("research_sorted_bare", "research_reverse_bare")
  length_task: str = "research_compose_bare"
  # Every method of the library on one held-out format, and the task-aware
  # ones on the multi-task mixture (size: sizes[0]).
  methods_task: str = "research_compose_bare"
  multitask_task: str = "research_marked_multitask"
  # ATTEMPT's source prompts: plain prompts on the bare formats of the two
  # skills the composition is made of (sort, then reverse).
  attempt_sources: tuple[str, ...] = ("synthetic_sort_bare_indexed", "synthetic_reverse_bare")
  # Recycling (Lester et al. 2022): every ordered pair of the family's backbones
  # (sizes x backbone_seeds), prompts of these seeds trained on its binary task.
  backbone_seeds: tuple[int, ...] = (0, 1)
  recycle_prompt_seeds: tuple[int, ...] = (0, 1)
  # The family experiments (Lester et al. 2021 and 2022 on a Family: the
  # miniature, or the byte family in the quick run): a 3-point learning-rate
  # sweep per method per size, selected on validation; prompt lengths; the
  # ensemble's size; recycling's support rule (skip the most frequent
  # `recycle_skip` pieces, take `recycle_take`) and recyclers.
  family_experiments: bool = False
  family_lengths: tuple[int, ...] = (1, 5, 20, 100)
  family_prompt_length: int = 20
  # The size of the initialization and length experiments (None: the smallest).
  family_claims_size: Optional[str] = None
  prompt_rates: tuple[float, ...] = (0.1, 0.3, 1.0)
  finetune_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
  ensemble_size: int = 5
  sampled_top: int = 5000
  recycle_skip: int = 1000
  recycle_take: int = 4000
  # All three of the paper's recyclers; with the exact least-squares fit
  # linear_combination is the same map as linear (tests/test_recycling.py), so
  # their rows agree unless the fit is regularized.
  family_recyclers: tuple[str, ...] = ("linear", "linear_combination", "mlp")
  # The byte-family experiments this run makes (the others are retired: their
  # claims need what the byte family lacks; see family.byte_family).
  byte_experiments: tuple[str, ...] = ("length", "ensemble", "methods", "multitask")
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


# The byte family's claims under the significance rules (tiny backbone, 5 seeds,
# 128 validation examples per selection, 512 test examples): the methods that
# carry a claim (the other methods' rows are not rerun: about 35 more minutes).
FULL = Suite(sizes=("tiny",), backbone_seeds=(0,), eval_examples=128, lengths=(1, 10),
             method_subset=("prompt tuning (", "ATTEMPT"))
# Every stage once, on one task, 12 steps: what the test suite runs. Two seeds
# (the least a permutation test takes: its across-seed verdicts are inconclusive)
# and one seed for the byte methods (their claims: "not testable here").
QUICK = Suite(sizes=("tiny",), pretrain_steps=(("tiny", 150),), seeds=(0, 1), steps=12,
              finetune_steps=12, lengths=(1, 10), evaluations=2, eval_examples=16,
              test_examples=32, length_task="research_sorted_bare",
              methods_task="research_sorted_bare", backbone_seeds=(0, 1),
              method_subset=("prompt tuning (", "ATTEMPT"), method_seeds=(0,),
              refuse_inseparable=False, family_experiments=True, family_lengths=(1, 10),
              family_prompt_length=10, prompt_rates=(0.3, 1.0), finetune_rates=(1e-3,),
              ensemble_size=2, sampled_top=20, recycle_skip=2, recycle_take=16,
              recycle_prompt_seeds=(0,), family_recyclers=("linear", "linear_combination", "mlp"),
              # The byte family's length and ensemble code is the family experiments'
              # (run here on the byte family): the quick run does not repeat it.
              byte_experiments=("methods", "multitask"))


# Lester et al. 2021 and 2022 on the real-language miniature (issue 34):
# `python -m benchmarks.research --suite miniature`, with the family made
# (`python -m prompt_tuning.miniature make`, and `make --seed 1`). No byte
# experiments: this preset is the family's. Sized for 90 minutes on 2 cores
# from runs timed per size (CPU seconds at 100 and 300 steps: prompt tuning
# about 15 s per run plus 0.1 s a step at xs and s, 0.23 s at m; fine-tuning
# 0.1, 0.17 and 0.41 s a step; l about 3.6 times m's parameters): the 56
# size-axis runs, 25 initialization and length runs, 8 recycling sources and
# 392 recycled-prompt scorings. Fine-tuning learns in 100 steps (m: 68% on
# miniature_pos); prompt tuning, whose gradient through these small frozen
# backbones is tiny, gets twice the steps, as the paper also trains prompts
# longer. The initialization and length experiments run on s: xs is too weak a
# model for a prompt to move (held-out token accuracy 24.9%, against 32% for s, m
# and l), and s costs the same.
# One prompt seed per backbone is recycled (every ordered pair of the 8
# backbones: 56 cases per recycler).
MINIATURE = Suite(
    seeds=(0, 1, 2, 3, 4), steps=200, finetune_steps=100, batch_size=32, evaluations=2,
    eval_examples=128, test_examples=372, family_experiments=True,
    family_lengths=(1, 5, 20, 100), family_prompt_length=20, family_claims_size="s",
    prompt_rates=(0.1, 0.3, 1.0), finetune_rates=(1e-3, 3e-3, 1e-2), ensemble_size=5,
    sampled_top=5000, recycle_skip=1000, recycle_take=4000,
    family_recyclers=("linear", "linear_combination", "mlp"), backbone_seeds=(0, 1),
    recycle_prompt_seeds=(0,), byte_experiments=())

# `--suite NAME` (`--quick` is "quick"; no flag is "full"), and the family a preset
# runs on when `--family` is not given.
PRESETS = {"full": FULL, "quick": QUICK, "miniature": MINIATURE}
PRESET_FAMILIES = {"miniature": "benchmarks.research.family:miniature_family"}


def suite_of(results: dict[str, Any]) -> Suite:
  """The Suite a results file was made with (its `suite` entry; JSON made the tuples lists)."""
  def tuples(value):
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value
  known = {f.name for f in dataclasses.fields(Suite)}  # older files carry retired fields
  return Suite(**{k: tuples(v) for k, v in results["suite"].items() if k in known})
