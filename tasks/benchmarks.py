"""GLUE, SuperGLUE, the sentiment tasks of prompt recycling and MRQA, over TFDS.

Inputs follow T5's text-to-text format: the benchmark's task name, then each
text field as `name: text`, e.g.

  rte sentence1: A man is asleep. sentence2: A person sleeps.  -> entailment

Every GLUE / SuperGLUE task is registered in these variants:

  glue_<t>_v002, super_glue_<t>_v102      standard (T5's names and format)
  taskless_glue_<t>_v002, ...             no task name: the prompt alone
                                          has to say what the task is
  task_index_glue_<t>_v002, ...           taskless, plus an int32
                                          `task_index` feature (the task's
                                          position in its benchmark's mixture;
                                          mnli_matched, ax, axb, ... take the
                                          index of the task they are cast as)
  glue_<t>_v002_rank, taskless_..._rank   rank classification: one example
                                          per label, scored, not decoded
                                          (classification tasks only).
                                          Training regroups an example's
                                          labels (train/rank_data.py): the
                                          correct one is the positive, the
                                          others negatives (runs/rank_loss.gin
                                          trains on all of them; the token
                                          loss on the positive alone)

Mixtures, each task at a rate of its training-set size:
glue_v002_proportional and super_glue_v102_proportional, with taskless_ and
task_index_ versions.

Sentiment with the verbalizers of prompt recycling (taskless format):
taskless_glue_sst2_v002_<verbalizer>, taskless_imdb_reviews_<verbalizer>
(and _rank), for each verbalizer in SENTIMENT_VERBALIZERS.

MRQA (the extractive QA tasks of SPoT's prompt transfer): mrqa_<subset>,
`question: ... context: ...` -> the first answer, scored against all of them.

All use the configurable task vocabulary (vocabularies.py).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import vocabularies


@dataclasses.dataclass(frozen=True)
class Spec:
  """One TFDS dataset as a text-to-text task."""
  benchmark: str                 # 'glue' or 'super_glue'
  name: str                      # the task's short name, e.g. 'rte'
  tfds_name: str
  fields: tuple[str, ...]        # text fields, in the order they are written
  labels: Optional[tuple[str, ...]]  # label names; None for regression / QA
  metric_fns: tuple[Callable, ...]
  train_size: int = 0            # training examples (mixing rate); 0: not in the mixture
  prefix: Optional[str] = None   # the task name written in the input (default: name)
  kind: str = "classification"   # classification | stsb | multirc | record | wsc
  splits: Sequence[str] | dict[str, str] = ("train", "validation", "test")

  @property
  def version(self) -> str:
    return "v002" if self.benchmark == "glue" else "v102"

  def task_name(self, variant: str = "") -> str:
    base = f"{self.benchmark}_{self.name}_{self.version}"
    if variant in ("taskless", "task_index"):
      return f"{variant}_{base}"
    return base


_ENTAIL2 = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")
_BOOL = ("False", "True")
_TEST_ONLY = ("test",)

GLUE = (
    Spec("glue", "cola", "glue/cola", ("sentence",), ("unacceptable", "acceptable"),
         (metrics.matthews_corrcoef,), 8551),
    Spec("glue", "sst2", "glue/sst2", ("sentence",), ("negative", "positive"),
         (metrics.accuracy,), 67349),
    Spec("glue", "mrpc", "glue/mrpc", ("sentence1", "sentence2"),
         ("not_equivalent", "equivalent"), (metrics.f1_binary, metrics.accuracy), 3668),
    Spec("glue", "qqp", "glue/qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
         (metrics.f1_binary, metrics.accuracy), 363846),
    Spec("glue", "stsb", "glue/stsb", ("sentence1", "sentence2"), None,
         (metrics.pearson_corrcoef, metrics.spearman_corrcoef), 5749, kind="stsb"),
    Spec("glue", "mnli", "glue/mnli", ("hypothesis", "premise"), _MNLI, (metrics.accuracy,),
         392702, splits=("train", "validation_matched", "validation_mismatched",
                         "test_matched", "test_mismatched")),
    Spec("glue", "mnli_matched", "glue/mnli", ("hypothesis", "premise"), _MNLI,
         (metrics.accuracy,), prefix="mnli",
         splits={"validation": "validation_matched", "test": "test_matched"}),
    Spec("glue", "mnli_mismatched", "glue/mnli", ("hypothesis", "premise"), _MNLI,
         (metrics.accuracy,), prefix="mnli",
         splits={"validation": "validation_mismatched", "test": "test_mismatched"}),
    Spec("glue", "qnli", "glue/qnli", ("question", "sentence"), _ENTAIL2, (metrics.accuracy,),
         104743),
    Spec("glue", "rte", "glue/rte", ("sentence1", "sentence2"), _ENTAIL2, (metrics.accuracy,),
         2490),
    Spec("glue", "wnli", "glue/wnli", ("sentence1", "sentence2"),
         ("not_entailment", "entailment"), (metrics.accuracy,), 635),
    # The diagnostic set is cast as MNLI (T5 evaluates it with the MNLI task name).
    Spec("glue", "ax", "glue/ax", ("hypothesis", "premise"), _MNLI,
         (metrics.accuracy,), prefix="mnli",
         splits=_TEST_ONLY),
)

SUPER_GLUE = (
    Spec("super_glue", "boolq", "super_glue/boolq", ("passage", "question"), _BOOL,
         (metrics.accuracy,), 9427),
    Spec("super_glue", "cb", "super_glue/cb", ("hypothesis", "premise"),
         ("entailment", "contradiction", "neutral"),
         (functools.partial(metrics.f1_macro, num_classes=3), metrics.accuracy), 250),
    Spec("super_glue", "copa", "super_glue/copa", ("choice1", "choice2", "premise", "question"),
         ("choice1", "choice2"), (metrics.accuracy,), 400),
    Spec("super_glue", "multirc", "super_glue/multirc", ("question", "answer", "paragraph"),
         _BOOL, (metrics.multirc,), 27088, kind="multirc"),
    Spec("super_glue", "record", "super_glue/record", ("query", "entities", "passage"), None,
         (metrics.record,), 100730, kind="record"),
    Spec("super_glue", "rte", "super_glue/rte", ("hypothesis", "premise"), _ENTAIL2,
         (metrics.accuracy,), 2490),
    Spec("super_glue", "wic", "super_glue/wic", ("sentence1", "sentence2", "word"), _BOOL,
         (metrics.accuracy,), 5428),
    Spec("super_glue", "wsc", "super_glue/wsc.fixed", ("text",), _BOOL, (metrics.accuracy,),
         554, kind="wsc"),
    # The diagnostics are cast as RTE.
    Spec("super_glue", "axb", "super_glue/axb", ("sentence1", "sentence2"), _ENTAIL2,
         (metrics.matthews_corrcoef,), prefix="rte", splits=_TEST_ONLY),
    Spec("super_glue", "axg", "super_glue/axg", ("hypothesis", "premise"), _ENTAIL2,
         (metrics.accuracy,), prefix="rte", splits=_TEST_ONLY),
)

# Label words for the sentiment tasks of prompt recycling: T5's own, and
# alternatives with the same polarity (index 0 negative, 1 positive).
SENTIMENT_VERBALIZERS = {
    "positive_negative": ("negative", "positive"),
    "great_terrible": ("terrible", "great"),
    "good_bad": ("bad", "good"),
}

MRQA_SUBSETS = {
    # In-domain (train and validation).
    "squad": ("train", "validation"), "news_qa": ("train", "validation"),
    "trivia_qa": ("train", "validation"), "search_qa": ("train", "validation"),
    "hotpot_qa": ("train", "validation"), "natural_questions": ("train", "validation"),
    # Out-of-domain (test only).
    "bio_asq": ("test",), "drop": ("test",), "duo_rc": ("test",), "race": ("test",),
    "relation_extraction": ("test",), "textbook_qa": ("test",),
}


# --- Formatting -------------------------------------------------------------------

def join_fields(example, fields: Sequence[str], prefix: Optional[str]) -> tf.Tensor:
  """'prefix f1: text1 f2: text2 ...' (no prefix for the taskless variants)."""
  parts = [prefix] if prefix else []
  for field in fields:
    parts += [f"{field}:", example[field]]
  return tf.strings.join(parts, separator=" ")


def label_text(label: tf.Tensor, labels: Sequence[str]) -> tf.Tensor:
  """The label's name; '<unk>' for an unlabeled (-1) example, as in T5."""
  label = tf.cast(label, tf.int32)
  return tf.cond(label < 0, lambda: tf.constant("<unk>"),
                 lambda: tf.gather(tf.constant(list(labels)), label))


def _idx_string(example) -> tf.Tensor:
  idx = example["idx"]
  if isinstance(idx, dict):
    return tf.strings.join([tf.strings.as_string(idx[k]) for k in sorted(idx)], separator="-")
  return tf.strings.as_string(idx)


def _mark_span(text: str, span: str, index: int, mark: str) -> str:
  """Surrounds `span`, starting at word `index`, with `mark`s (as T5 marks WSC spans)."""
  m = re.match(r"^((?:\S+\s){%d})(%s)" % (max(index, 0), re.escape(span)), text)
  if not m:
    return text
  return text[:m.start(2)] + f"{mark} {span} {mark}" + text[m.end(2):]


def _wsc_text(text, span1, index1, span2, index2) -> bytes:
  text, span1, span2 = (x.decode("utf-8") for x in (text, span1, span2))
  text = _mark_span(text, span1, int(index1), "*")
  # The first mark added two words before span 2 if span 1 comes first.
  shift = 2 if int(index1) < int(index2) else 0
  return _mark_span(text, span2, int(index2) + shift, "#").encode("utf-8")


def _record_passage(passage: tf.Tensor) -> tf.Tensor:
  passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
  return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def formatter(spec: Spec, prefix: Optional[str]) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """A preprocessor writing `inputs`, `targets` and an example id `uid`."""

  def one(ex):
    out = {}
    if spec.kind == "wsc":
      marked = tf.numpy_function(_wsc_text, [ex["text"], ex["span1_text"], ex["span1_index"],
                                             ex["span2_text"], ex["span2_index"]], tf.string,
                                 stateful=False)
      marked.set_shape([])
      out["inputs"] = join_fields({"text": marked}, ("text",), prefix)
    else:
      out["inputs"] = join_fields(ex, spec.fields, prefix)
    if spec.kind == "multirc":
      text = tf.strings.regex_replace(out["inputs"], "<br>", " ")
      out["inputs"] = tf.strings.regex_replace(text, "<(/)?b>", "")
      out["group"] = tf.strings.join([tf.strings.as_string(ex["idx"]["paragraph"]),
                                      tf.strings.as_string(ex["idx"]["question"])], "-")
    if spec.kind == "stsb":
      out["targets"] = tf.strings.as_string(tf.round(ex["label"] * 5) / 5, precision=1)
    else:
      out["targets"] = label_text(ex["label"], spec.labels)
      out["label"] = tf.cast(ex["label"], tf.int32)
    out["uid"] = _idx_string(ex)
    return out

  def record_examples(ex):
    passage = _record_passage(ex["passage"])
    entities = tf.strings.reduce_join(ex["entities"], separator=", ")
    inputs = join_fields({"query": ex["query"], "entities": entities, "passage": passage},
                         spec.fields, prefix)
    answers = ex["answers"]
    n = tf.size(answers)
    # One training example per gold answer; '<unk>' when there is none.
    targets = tf.cond(n > 0, lambda: answers, lambda: tf.constant(["<unk>"]))
    count = tf.size(targets)
    group = _idx_string(ex)
    return tf.data.Dataset.from_tensors({
        "inputs": tf.fill([count], inputs), "targets": targets,
        "answers": tf.tile(tf.expand_dims(answers, 0), [count, 1]),
        "group": tf.fill([count], group), "uid": tf.fill([count], group)}).unbatch()

  def preprocess(ds):
    if spec.kind == "record":
      return ds.flat_map(record_examples)
    return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)
  return preprocess


def add_task_index(index: int) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  def preprocess(ds):
    return ds.map(lambda ex: {**ex, "task_index": tf.constant(index, tf.int32)})
  return preprocess


def expand_candidates(labels: Sequence[str]) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """Rank classification: one example per label, with `is_correct` and `rank_group`."""
  candidates = tf.constant(list(labels))
  n = len(labels)

  def expand(ex):
    group = tf.strings.join([ex["uid"], ex["inputs"]], separator="|")
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.fill([n], ex["inputs"]), "targets": candidates,
        "is_correct": tf.equal(tf.range(n), ex["label"]),
        "rank_group": tf.fill([n], group)})

  def preprocess(ds):
    return ds.flat_map(expand)
  return preprocess


# --- Registration -----------------------------------------------------------------

def _features() -> dict[str, seqio.Feature]:
  vocab = vocabularies.TASK_VOCABULARY
  return {"inputs": seqio.Feature(vocab, add_eos=True),
          "targets": seqio.Feature(vocab, add_eos=True)}


_TOKENIZE = (seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim)


def _postprocessor(spec: Spec):
  if spec.kind == "stsb":
    return postprocessors.string_to_float
  if spec.kind == "multirc":
    return postprocessors.GroupedLabel(spec.labels)
  if spec.kind == "record":
    return postprocessors.record
  return postprocessors.Verbalizer(spec.labels)


# TFDS versions (T5's): seqio needs one in the name.
TFDS_VERSIONS = {"glue": "2.0.0", "super_glue": "1.0.2", "imdb_reviews": "1.0.0",
                 "mrqa": "1.0.0"}


def tfds_name(name: str) -> str:
  return f"{name}:{TFDS_VERSIONS[name.split('/')[0]]}"


def _source(spec: Spec) -> seqio.TfdsDataSource:
  splits = spec.splits if isinstance(spec.splits, dict) else tuple(spec.splits)
  return seqio.TfdsDataSource(tfds_name=tfds_name(spec.tfds_name), splits=splits)


def _add(name: str, **kwargs) -> None:
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(name, output_features=_features(), **kwargs)


def register_spec(spec: Spec, task_index: int) -> list[str]:
  """Registers every variant of one dataset; returns their names."""
  names = []
  source = _source(spec)
  for variant in ("", "taskless", "task_index"):
    prefix = (spec.prefix or spec.name) if variant == "" else None
    pre = [formatter(spec, prefix)]
    if variant == "task_index":
      pre.append(add_task_index(task_index))
    name = spec.task_name(variant)
    _add(name, source=source, preprocessors=[*pre, *_TOKENIZE],
         postprocess_fn=_postprocessor(spec), metric_fns=list(spec.metric_fns))
    names.append(name)
    if spec.labels and spec.kind != "stsb" and variant != "task_index":
      _add(f"{name}_rank", source=source,
           preprocessors=[formatter(spec, prefix), expand_candidates(spec.labels), *_TOKENIZE],
           postprocess_fn=postprocessors.rank_candidate,
           metric_fns=[metrics.rank_classification])
      names.append(f"{name}_rank")
  return names


def _register_mixtures(specs: Sequence[Spec], name: str) -> list[str]:
  members = [s for s in specs if s.train_size]
  out = []
  for variant in ("", "taskless", "task_index"):
    mixture = f"{variant}_{name}" if variant else name
    if mixture not in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.add(mixture, [(s.task_name(variant), float(s.train_size))
                                          for s in members])
    out.append(mixture)
  return out


def _sentiment_spec(dataset: str, verbalizer: str) -> tuple[str, Spec]:
  labels = SENTIMENT_VERBALIZERS[verbalizer]
  if dataset == "sst2":
    spec = Spec("glue", "sst2", "glue/sst2", ("sentence",), labels, (metrics.accuracy,))
    return f"taskless_glue_sst2_v002_{verbalizer}", spec
  spec = Spec("imdb", "reviews", "imdb_reviews/plain_text", ("text",), labels,
              (metrics.accuracy,), splits=("train", "test"))
  return f"taskless_imdb_reviews_{verbalizer}", spec


def _imdb_uid(ds):
  return ds.map(lambda ex: {**ex, "idx": tf.strings.to_hash_bucket_fast(ex["text"], 2**62)})


def _register_sentiment() -> list[str]:
  names = []
  for dataset in ("sst2", "imdb"):
    for verbalizer in SENTIMENT_VERBALIZERS:
      name, spec = _sentiment_spec(dataset, verbalizer)
      pre = [_imdb_uid] if dataset == "imdb" else []
      source = _source(spec)
      _add(name, source=source, preprocessors=[*pre, formatter(spec, None), *_TOKENIZE],
           postprocess_fn=postprocessors.Verbalizer(spec.labels), metric_fns=[metrics.accuracy])
      _add(f"{name}_rank", source=source,
           preprocessors=[*pre, formatter(spec, None), expand_candidates(spec.labels),
                          *_TOKENIZE],
           postprocess_fn=postprocessors.rank_candidate, metric_fns=[metrics.rank_classification])
      names += [name, f"{name}_rank"]
  return names


def _mrqa_format(ex):
  answers = ex["answers"]
  target = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant("<unk>"))
  return {"inputs": tf.strings.join(["question:", ex["question"], "context:", ex["context"]],
                                    separator=" "),
          "targets": target, "answers": answers, "uid": ex["qid"]}


def _register_mrqa() -> list[str]:
  names = []
  for subset, splits in MRQA_SUBSETS.items():
    name = f"mrqa_{subset}"
    _add(name, source=seqio.TfdsDataSource(tfds_name=tfds_name(f"mrqa/{subset}"), splits=splits),
         preprocessors=[lambda ds: ds.map(_mrqa_format), *_TOKENIZE],
         postprocess_fn=postprocessors.qa, metric_fns=[metrics.squad])
    names.append(name)
  return names


REGISTERED_TASKS: list[str] = []
REGISTERED_MIXTURES: list[str] = []


def register() -> None:
  """Registers every task and mixture above (idempotent)."""
  if REGISTERED_TASKS:
    return
  for specs in (GLUE, SUPER_GLUE):
    # Evaluation-only sets share the index of the task they are cast as.
    index = {s.name: i for i, s in enumerate(s for s in specs if s.train_size)}
    for spec in specs:
      REGISTERED_TASKS.extend(register_spec(spec, index[spec.prefix or spec.name]))
  REGISTERED_MIXTURES.extend(_register_mixtures(GLUE, "glue_v002_proportional"))
  REGISTERED_MIXTURES.extend(_register_mixtures(SUPER_GLUE, "super_glue_v102_proportional"))
  REGISTERED_TASKS.extend(_register_sentiment())
  REGISTERED_TASKS.extend(_register_mrqa())
