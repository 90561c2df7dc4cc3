"""The research suite: do the papers' central claims hold, tested against controls?

    python -m benchmarks.research                  # the byte family's claims (5 seeds)
    python -m benchmarks.research --family M:F     # and Lester 2021/2022 on family M:F
    python -m benchmarks.research --quick          # a smoke run of every stage (<= 3 min)

Every run selects its checkpoint on the validation split (checkpoints every
steps / `evaluations` steps, the best validation score kept, as the paper's
early stopping on the development set) and reports the held-out test split.
Every claim names its control and is decided by a significance test
(`stats`): across seeds an exact permutation test (at least 5 seeds a side),
on one shared test set McNemar's exact test or a paired bootstrap; the
effect is reported with its 95% interval, and the verdict is "reproduced
(p < 0.05)", "contradicted (p < 0.05)", "inconclusive" or "not testable
here: <reason>".

Two kinds of experiment:

  byte family   (`experiments`) the tiny byte-level backbone pretrained on
                `research_pretrain` (prompt_tuning/tasks/research.py):
                prompt length (Lester 2021), ensembles against the prompt
                validation selects and against the mean (Lester 2021),
                ATTEMPT against prompt tuning (Asai 2022), HyperPrompt
                against a multi-task prompt at equal parameters (He 2022),
                ID-PT against a static prompt (Levine 2022). Its size axis,
                initializations and recycling are retired: they need what a
                byte alphabet lacks (claims.RETIRED says why).
  a family      (`experiments_family`, on any `family.Family`: the byte
                family in the quick run, the real-language miniature with
                `--family`) Lester 2021: the fine-tuning minus prompt-tuning
                gap against log(parameters), each method's learning rate
                picked on validation from a 3-point sweep at each size;
                random-uniform vs sampled-vocabulary (the 5,000 most frequent
                pieces) vs class-label init; prompt lengths 1, 5, 20, 100;
                an ensemble of 5 against the best single prompt and the mean.
                Lester 2022: the three recyclers over every ordered pair of
                backbones (sizes x pretraining seeds), support = frequent
                pieces skipping 1,000, taking 4,000; success = beating the
                target's strongest zero-shot baseline; controls: an untrained
                prompt recycled, a random orthogonal map, and random answers
                (simulated); held against the paper's 88.9%.

ID-PT against equal-budget controls on the miniature (Levine et al. 2022,
issue 35) is its own experiment, `python -m benchmarks.research.idpt`
(`idpt`). Open-book reading and recursive LMs have their own scripts
(benchmarks/open_book.py; benchmarks/giants.py runs them end to end).

Runs are cached in folders keyed by every setting that changes a result
(`runs.run_settings`: method and its settings, learning rate, steps, seed,
batch, task, feature lengths, backbone path and content hash, selection), so
an interrupted suite resumes where it stopped. Results: research.json,
research.md and a plot in benchmarks/results/<machine>/ (`--out` elsewhere;
the quick run writes to a temporary folder unless given `--out`).

The package: `config` (what the suite runs), `family` (the backbone-family
interface and the byte family), `runs` (one run: train, select on
validation, score on test; cached), `methods` (the methods compared),
`experiments` and `experiments_family` (the experiments), `stats` (the
tests and verdicts), `claims` (the claims table), `report` (markdown and
plot) and `cli` (`main`).
"""
