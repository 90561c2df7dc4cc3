"""`python -m benchmarks.research`: runs the suite (see the package docstring)."""

import sys

from benchmarks.research import cli

sys.exit(cli.main())
