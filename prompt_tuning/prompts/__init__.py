"""Prompt modules that plug into the T5 prompt seam, and their initializers.

  soft.py             SoftPrompt: one [P, H] prompt (Lester et al. 2021)
  multi_task.py       MultiTaskPrompt (shared + per-task: add, concat length,
                      concat features, projection), PromptBank [N, P, H]
                      indexed per example, and ensembling helpers
  hyper.py            HyperPrompt: per-layer key/value prompts from a hypernetwork
  input_dependent.py  InputDependentPrompt: a generator writes a prompt per input
  attempt.py          AttemptPrompt: input-dependent mixture of frozen source prompts
  initializers.py     the paper's initializations
"""
