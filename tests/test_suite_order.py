"""The suite's order under `pytest -n 2` (tests/scheduling.py): slowest first, and the
tests that share a module fixture kept together, so that the two workers end together
and no module fixture is built twice."""

import os
import re

from tests import scheduling
from tests.conftest import REPO_ROOT


def test_slowest_unit_first_files_together_ties_in_collection_order():
  together = "tests/test_quickstart.py"
  slow = "tests/test_research_suite.py::test_quick_run_writes_every_figure_and_tests_every_claim"
  ids = ["tests/test_a.py::test_1", f"{together}::test_x", "tests/test_a.py::test_2", slow,
         f"{together}::test_y", "tests/test_b.py::test_3"]
  assert scheduling.TOGETHER[together] > scheduling.SECONDS[slow] > scheduling.DEFAULT_SECONDS
  assert scheduling.slowest_first(ids, lambda x: x) == [
      f"{together}::test_x", f"{together}::test_y", slow,
      "tests/test_a.py::test_1", "tests/test_a.py::test_2", "tests/test_b.py::test_3"]
  assert scheduling.scope(f"{together}::test_y") == together
  assert scheduling.scope(slow) == slow


def test_a_parametrized_test_matches_its_prefix_and_the_longest_key_wins():
  docs = "tests/test_docs.py::test_runnable_command_exits_0_and_says_what_it_should"
  quick = docs + "[README.md:prompt-tuning quickstart --pretrain_steps 4 --prompt_steps 2]"
  assert scheduling.seconds(quick) > scheduling.seconds(docs + "[docs/x.md:prompt-tuning tasks]")
  assert scheduling.seconds(docs + "[docs/x.md:prompt-tuning tasks]") == scheduling.SECONDS[docs]
  assert scheduling.seconds("tests/test_nothing.py::test_new") == scheduling.DEFAULT_SECONDS


def test_every_named_file_exists_and_every_module_fixture_file_is_kept_together():
  """The table names real files; a file with a module-scoped fixture is one unit (split
  between workers, each would build the fixture)."""
  named = set(scheduling.TOGETHER) | {k.split("::")[0] for k in scheduling.SECONDS}
  missing = sorted(f for f in named if not os.path.isfile(os.path.join(REPO_ROOT, f)))
  assert not missing, missing
  tests = os.path.join(REPO_ROOT, "tests")
  with_module_fixtures = {
      f"tests/{name}" for name in os.listdir(tests)
      if name.startswith("test_") and name.endswith(".py")
      and re.search(r'^@pytest\.fixture\(scope="module"', open(os.path.join(tests, name)).read(),
                    re.M)}
  assert sorted(with_module_fixtures - set(scheduling.TOGETHER)) == []
