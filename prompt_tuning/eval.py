"""`python -m prompt_tuning.eval --gin_file=... --gin.NAME=VALUE`."""

import sys

from prompt_tuning.cli.main import run_gin_binary

if __name__ == "__main__":
  sys.exit(run_gin_binary("eval", sys.argv[1:]))
