"""`python -m prompt_tuning.infer --gin_file=... --gin.NAME=VALUE`."""

import sys

from prompt_tuning.cli.main import run_gin_binary

if __name__ == "__main__":
  sys.exit(run_gin_binary("infer", sys.argv[1:]))
