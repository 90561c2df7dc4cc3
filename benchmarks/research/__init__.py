"""The research suite: do the papers' central claims hold on the synthetic family?

    python -m benchmarks.research            # the whole suite (target: <= 90 min, 2 cores)
    python -m benchmarks.research --quick    # a smoke run of every stage (<= 3 min)

Backbones: T5 1.1-style models over the byte vocabulary in three sizes
(`tiny`, `small`, `medium`: 0.25M, 1.3M and 4.3M parameters) and two
pretraining seeds, pretrained on
`research_pretrain` (the quickstart's seven string tasks plus two
classification skills; see prompt_tuning/tasks/research.py) and cached under
the project cache like the quickstart's. Held-out formats: generation,
composition of two skills, classification (rank classification over yes/no),
and a multi-task mixture. Every figure is the mean and standard deviation
over `seeds` (3) runs that differ in the prompt's initialization and the
data order.

Experiments and the claims they test (each reported as reproduced or not,
with its numbers):

  scale      Lester et al. 2021: the gap between prompt tuning and full
             fine-tuning shrinks as the backbone grows; on the classification
             format and on the generation format (reverse a word).
  init       Lester et al. 2021: class-label and sampled-vocabulary
             initializations beat random-uniform at small sizes.
  length     Lester et al. 2021: longer prompts help, up to a point.
  ensemble   Lester et al. 2021: a majority vote of the 3 prompts of the
             scale experiment beats their average single score.
  methods    every single-task method of the library on the composition
             format, equal steps, with its trainable-parameter count: prompt
             tuning, full fine-tuning, deep prompts, prefix tuning, IA3,
             prompt + IA3, wayward prompts, SPoT and ATTEMPT (Asai et al.
             2022: ATTEMPT with good source prompts beats prompt tuning from
             scratch).
  multitask  the multi-task mixture: one static prompt, a multi-task prompt
             and HyperPrompt-Global at equal trainable parameters (He et al.
             2022), and ID-PT with no task index (Levine et al. 2022: ID-PT
             beats a static prompt).
  recycling  Lester et al. 2022, scored as in the paper: rank classification
             on a yes/no task, every ordered pair of sizes x pretraining
             seeds, success = beating the target's strongest zero-shot
             baseline; success rate per method, and toward larger vs smaller
             targets.

Open-book reading and recursive LMs (Levine et al. 2022) have their own
evidence script, benchmarks/giants.py.

A figure where every method and seed scores the same 0% or 100% fails the
run, naming the task: such a table cannot tell a right implementation from
a wrong one, so the task must be made harder instead of reported.

Runs are cached (each run folder keeps its result), so an interrupted suite
resumes where it stopped. Results: research.json, research.md and PNG plots
in benchmarks/results/<machine>/ (`--out` elsewhere; the quick run writes to
a temporary folder unless given `--out`).

The package: `config` (what the suite runs), `runs` (one training run,
cached, and its score), `methods` (the methods compared), `experiments` (the
experiments and the whole suite), `stats` (aggregates over seeds, the
separation check, the claims' verdicts), `report` (markdown and plots) and
`cli` (`main`).
"""
