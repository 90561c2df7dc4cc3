"""The order the suite runs in under pytest-xdist (`pytest -n 2`).

Two workers finish together only when the long tests start first: xdist's
default `load` schedule sends tests in collection order, so a two-minute test
collected last sets the wall time alone while the other worker idles. It also
splits a file's tests between the workers, so a module-scoped fixture (a
pretrained backbone, an 8-device run) is built once on each.

Here, instead:

- the tests of a file in `TOGETHER` form one unit that runs on one worker (they
  share an expensive module fixture);
- units run slowest first (longest-processing-time order: each worker takes the
  next unit when it is nearly idle), by the seconds in `SECONDS`; a test not
  named there counts as `DEFAULT_SECONDS` and keeps its collection order.

`tests/conftest.py` wires this in. Running without `-n` keeps the plain
collection order. Only the order the figures give matters, not their exact
values: re-measure with `pytest -n 2 --durations=40` when a test grows.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

Item = TypeVar("Item")

# Files whose tests share a module-scoped fixture worth building once, with the seconds
# (setup + calls) of the whole file, measured or, for the short ones, estimated.
TOGETHER = {
    "tests/test_attention_loop.py": 40,
    "tests/test_bad_inputs.py": 40,
    "tests/test_binaries.py": 60,
    "tests/test_decoding.py": 30,
    "tests/test_first_use.py": 30,
    "tests/test_hf_parity.py": 30,
    "tests/test_peft_interop.py": 30,
    "tests/test_miniature.py": 40,
    "tests/test_own_data_recipe.py": 150,
    "tests/test_provenance.py": 20,
    "tests/test_quickstart.py": 200,
    "tests/test_recursion_controls.py": 80,
    "tests/test_serving.py": 60,
    "tests/test_serving_continuous.py": 10,
    "tests/test_serving_openai.py": 30,
    "tests/test_sharding.py": 160,
    "tests/test_train_evaluation.py": 130,
    "tests/test_transfer_controls.py": 60,
    "tests/test_wayward.py": 20,
}

# The seconds (setup + call) of each test whose node id starts with the key (the longest
# key that matches wins), measured with `-n 2` on a 2-core machine.
SECONDS = {
    "tests/test_open_book.py::test_the_benchmarks_quick_mode_runs_every_method_and_writes_the_claims":
        60,
    "tests/test_research_suite.py::test_quick_run_writes_every_figure_and_tests_every_claim": 150,
    "tests/test_idpt_controls.py::test_the_quick_run_measures_every_method": 60,
    "tests/test_training_guarantees.py::test_sigkill_anywhere_then_resume_equals_uninterrupted_run":
        80,
    "tests/test_tasks.py::test_every_registered_task_yields_examples_on_mock_data": 55,
    "tests/test_open_book.py::test_the_benchmarks_quick_mode_runs_every_method_and_writes_the_claims":
        150,
    "tests/test_docs.py::test_runnable_command_exits_0_and_says_what_it_should": 20,
    "tests/test_docs.py::test_runnable_command_exits_0_and_says_what_it_should[README.md:"
    "prompt-tuning quickstart": 60,
    "tests/test_preemption_and_full_disk.py::": 40,
    "tests/test_rank_losses.py::test_training_with_the_rank_loss_raises_rank_accuracy": 30,
    "tests/test_recursion.py::test_textual_recursion_two_stages_through_train_eval_and_infer":
        28,
    "tests/test_recycling.py::test_harness_grid_and_report": 25,
    "tests/test_tasks.py::test_file_task_trains_a_prompt_end_to_end": 22,
    "tests/test_infer_binary.py::test_infer_is_quiet_by_default_and_verbose_on_request": 20,
    "tests/test_run_lock.py::test_second_trainer_on_one_model_dir_exits_2_naming_the_first": 20,
    "tests/test_checkpoint_damage.py::test_damaged_latest_checkpoint_is_named": 25,
    "tests/test_infer_binary.py::test_infer_on_the_byte_backbone": 25,
    "tests/test_input_dependent_prompts.py::test_a_separate_frozen_reader": 25,
    "tests/test_input_dependent_prompts.py::test_train_binary_on_a_mixture": 20,
    "tests/test_rank_losses.py::test_rank_task_train_batches_group_candidates": 20,
    "tests/test_dropout.py::test_a_positive_rate_draws_masks_from_the_seed": 20,
    "tests/test_recursion.py::test_neural_recursion_gradients_reach_the_connector": 20,
    "tests/test_recursion.py::test_neural_recursion_through_train_eval_and_infer": 14,
    "tests/test_argument_checks.py::test_allow_unused_turns_the_error_into_a_warning": 17,
    "tests/test_prompt_tuning.py::test_prompt_update_changes_only_the_prompt": 15,
    "tests/test_microbatches.py::test_microbatched_update_equals_the_single_batch_update": 15,
    "tests/test_prompt_methods.py::test_mixed_batch_equals_single_task_batches": 12,
    "tests/test_prompt_methods.py::test_only_the_methods_own_parameters_train": 10,
    "tests/test_ia3.py::test_combines_with_a_soft_prompt": 15,
    "tests/test_environment.py::test_second_run_compiles_nothing_new": 14,
    "tests/test_cli.py::test_decode_runs_on_real_checkpoint_and_vocabulary": 13,
    "tests/test_precompile.py::test_xxl_prompt_tuning_compiles_for_64_devices": 12,
}
DEFAULT_SECONDS = 1.0


def scope(nodeid: str) -> str:
  """The unit a test runs in: its file for a `TOGETHER` file, else the test alone."""
  path = nodeid.split("::", 1)[0]
  return path if path in TOGETHER else nodeid


def seconds(unit: str) -> float:
  """The expected seconds of a unit: a `TOGETHER` file's, or the test's."""
  if unit in TOGETHER:
    return TOGETHER[unit]
  keys = [k for k in SECONDS if unit.startswith(k)]
  return SECONDS[max(keys, key=len)] if keys else DEFAULT_SECONDS


def slowest_first(items: Sequence[Item], nodeid: Callable[[Item], str]) -> list[Item]:
  """`items` grouped by `scope` (each unit contiguous), the slowest unit first; units of
  equal weight, and the tests within a unit, keep their collection order."""
  units: dict[str, list[Item]] = {}
  for item in items:
    units.setdefault(scope(nodeid(item)), []).append(item)
  order = sorted(units, key=seconds, reverse=True)  # A stable sort: ties keep their order.
  return [item for unit in order for item in units[unit]]


def make_scheduler(config, log):
  """xdist's scope scheduler with `scope` as the unit and the collection's order kept
  (the workers already sorted it with `slowest_first`)."""
  from xdist.scheduler import LoadScopeScheduling

  class SlowestFirst(LoadScopeScheduling):

    def _split_scope(self, nodeid: str) -> str:
      return scope(nodeid)

  # Its default reorders units by their number of tests; the order here is by time.
  config.option.loadscopereorder = False
  return SlowestFirst(config, log)
