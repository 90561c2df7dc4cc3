"""The real-language miniature: a T5 1.1 family pretrained on the GCIDE dictionary.

One command makes the family (each step cached under the cache folder,
`$PROMPT_TUNING_CACHE` or ~/.cache/prompt_tuning; kill it and run it again
to continue):

    python -m prompt_tuning.miniature make      # corpus, vocabulary, then xs, s, m, l
    python -m prompt_tuning.miniature status    # what is made, with each size's quality

API (for the research suite; `corpus` is a prompt_tuning.tasks.miniature.Corpus):

    from prompt_tuning import miniature
    miniature.SIZES                          # ("xs", "s", "m", "l"), smallest first
    miniature.backbone_config(size)          # its T5Config
    miniature.parameter_count(config)        # exact
    path = miniature.require(size)           # finished backbone folder (T5X layout,
                                             # config.json, spiece.model,
                                             # quality.json), or NotMade in one line
    corpus = miniature.corpus()              # the prepared corpus (NotMade if not)
    corpus.frequent_ids(5000)                # sampled-vocabulary rows (Lester et al. 2021)
    corpus.frequent_ids(4000, skip=1000)     # recycling's rows (Lester et al. 2022)
    miniature.zero_shot("pos", size, "test") # the zero-shot row: accuracy and per-example hits
    miniature.majority_baseline("pos", corpus, "test")
    miniature.make(PretrainConfig(...))      # what `make` runs

Tasks (seqio, registered with `prompt_tuning.tasks`): miniature_pos,
miniature_etymology, miniature_headword, miniature_binary, their `_rank`
variants, and miniature_span_corruption; lengths `FEATURE_LENGTHS`.
See docs/miniature.md for the corpus, the cleaning rules and the sizes.
"""

from prompt_tuning.miniature.family import (  # noqa: F401
    FamilyNotDone, MAKE_COMMAND, NotMade, PretrainConfig, SIZES, backbone_config, backbone_path,
    check_order, copy_vocabulary, make, parameter_count, pretrain, quality, require, zero_shot)
from prompt_tuning.tasks.miniature import (  # noqa: F401
    FEATURE_LENGTHS, Corpus, CorpusSpec, majority_baseline, task_examples)


def corpus(spec: CorpusSpec = CorpusSpec(), cache_dir=None) -> Corpus:
  """The prepared corpus and vocabulary; NotMade (one line, with the command) if not made."""
  from prompt_tuning.tasks import miniature as tasks_lib
  try:
    return tasks_lib.find(spec, cache_dir)
  except tasks_lib.NotMade as e:
    raise NotMade(str(e)) from None
