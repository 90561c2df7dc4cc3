"""seqio task and mixture registrations; importing this package registers them.

Installed as `prompt_tuning.tasks` (the binaries import it):
  synthetic.py   the quickstart's synthetic string tasks (byte vocabulary)
  metrics.py     metric functions
The SuperGLUE / GLUE / transfer task library is tracked as its own issue.
"""

from prompt_tuning.tasks import synthetic

synthetic.register()
