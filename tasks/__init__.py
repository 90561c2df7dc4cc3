"""seqio task and mixture registrations; importing this package registers them.

Installed as `prompt_tuning.tasks` (the binaries import it):
  synthetic.py       the quickstart's synthetic string tasks (byte vocabulary)
  research.py        the research suite's harder formats and its pretraining mixture
  gcide.py           the GCIDE dictionary: cleaning, held-out entries, task examples
  span_corruption.py T5's span corruption (numpy)
  miniature.py       the real-language miniature's corpus, vocabulary and tasks
  reading.py         a key-lookup skill and `reading_pretrain`, the frozen reader's backbone
  benchmarks.py      GLUE, SuperGLUE (standard, taskless, task-index and rank
                     classification variants, mixtures), SST-2 / IMDB with
                     recycling's verbalizers, MRQA
  local_files.py     `file_task`: a task from TSV / JSON Lines files (gin-bindable)
  vocabularies.py    the benchmark tasks' vocabulary: T5, mT5, byte or any SPM file
  postprocessors.py  text -> labels, numbers, answers
  metrics.py         metric functions (seqio signatures)
"""

from prompt_tuning.tasks import benchmarks
from prompt_tuning.tasks import miniature
from prompt_tuning.tasks import reading
from prompt_tuning.tasks import research
from prompt_tuning.tasks import synthetic

synthetic.register()
research.register()
reading.register()
benchmarks.register()
miniature.register()
