"""Tasks from local TSV or JSON Lines files, without writing code.

From gin, the task is registered when the macro is first read:

  MIXTURE_OR_TASK_NAME = @file_task()
  file_task.name = 'my_sentiment'
  file_task.splits = {'train': '/data/train.tsv', 'validation': '/data/dev.tsv'}
  file_task.input_template = 'review: {text}'
  file_task.target_field = 'label'
  file_task.verbalizers = {'0': 'negative', '1': 'positive'}
  file_task.metrics = ['accuracy']

TSV files have a header row naming the fields; JSON Lines files hold one
object per line. The template is Python's str.format over a record's fields.
With verbalizers, the target field's value (as a string) is looked up in the
map and predictions are mapped back to labels for the metrics; without, the
target text is the field's value itself.
"""

from __future__ import annotations

import csv
import json
import os
import string
from typing import Any, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning import registry
from prompt_tuning.tasks import metrics as metrics_lib
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import vocabularies

METRICS = {
    "accuracy": metrics_lib.accuracy,
    "exact_match": metrics_lib.exact_match,
    "f1": metrics_lib.f1_binary,
    "f1_macro": metrics_lib.f1_macro,
    "matthews_corrcoef": metrics_lib.matthews_corrcoef,
    "pearson": metrics_lib.pearson_corrcoef,
    "spearman": metrics_lib.spearman_corrcoef,
    "squad": metrics_lib.squad,
}
# Metrics that compare label indices (need verbalizers) or numbers.
_LABEL_METRICS = {"accuracy", "f1", "f1_macro", "matthews_corrcoef"}
_NUMBER_METRICS = {"pearson", "spearman"}


def read_records(path: str, file_format: Optional[str] = None) -> list[dict[str, Any]]:
  """Rows of a TSV (with a header) or JSON Lines file, as dicts."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Task data file {path!r} does not exist")
  file_format = file_format or os.path.splitext(path)[1].lstrip(".").lower()
  if file_format in ("jsonl", "json"):
    rows = []
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path} line {n} is not valid JSON: {e}") from e
        if not isinstance(row, dict):
          raise ValueError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
  if file_format == "tsv":
    with open(path, encoding="utf-8", newline="") as f:
      lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
      raise ValueError(f"{path} is empty; expected a header row naming the fields")
    header, rows = lines[0], []
    for n, values in enumerate(lines[1:], 2):
      if not values:
        continue
      if len(values) != len(header):
        raise ValueError(f"{path} line {n} has {len(values)} fields but the header names "
                         f"{len(header)}: {header}")
      rows.append(dict(zip(header, values)))
    return rows
  raise ValueError(f"Unknown task file format {file_format!r} for {path}; expected 'tsv' "
                   "or 'jsonl'")


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def template_fields(template: str) -> list[str]:
  return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def format_records(rows: Sequence[Mapping[str, Any]], path: str, input_template: str,
                   target_field: str, verbalizers: Optional[Mapping[str, str]]
                   ) -> dict[str, list[str]]:
  """{'inputs': [...], 'targets': [...]}, with errors naming the file and row."""
  needed = template_fields(input_template) + [target_field]
  inputs, targets = [], []
  for n, row in enumerate(rows, 1):
    missing = [f for f in needed if f not in row]
    if missing:
      raise ValueError(f"{path} record {n} has no field(s) {missing}; it has {sorted(row)} "
                       f"(template {input_template!r}, target field {target_field!r})")
    inputs.append(input_template.format(**{k: row[k] for k in template_fields(input_template)}))
    value = str(row[target_field])
    if verbalizers is not None:
      if value not in verbalizers:
        raise ValueError(f"{path} record {n}: label {value!r} is not in the verbalizer map "
                         f"{dict(verbalizers)}")
      value = verbalizers[value]
    targets.append(value)
  return {"inputs": inputs, "targets": targets}


@registry.configurable
def file_task(name: str, splits: Mapping[str, str], input_template: str, target_field: str,
              verbalizers: Optional[Mapping[Any, str]] = None,
              metrics: Sequence[str] = ("accuracy",), file_format: Optional[str] = None,
              vocabulary: Optional[seqio.Vocabulary] = None) -> str:
  """Registers (or re-registers) a seqio task over local files; returns its name.

  Files are read and checked now, so a missing field or an unknown label is
  reported before any training starts.
  """
  unknown = [m for m in metrics if m not in METRICS]
  if unknown:
    raise ValueError(f"Unknown metric(s) {unknown} for task {name!r}; expected some of "
                     f"{sorted(METRICS)}")
  if not splits:
    raise ValueError(f"Task {name!r} needs at least one split file")
  verbal = {str(k): v for k, v in verbalizers.items()} if verbalizers else None
  records = {split: read_records(path, file_format) for split, path in splits.items()}
  if verbal is None and set(metrics) & _LABEL_METRICS:
    # String labels are their own target text; numbers ('0', '1') need words to decode to.
    labels = sorted({str(row[target_field]) for rows in records.values() for row in rows
                     if target_field in row})
    if not labels or any(_is_number(label) for label in labels):
      raise ValueError(f"Metrics {sorted(set(metrics) & _LABEL_METRICS)} compare labels and "
                       f"task {name!r} has numeric labels: give it a verbalizer map (label "
                       "value -> target text, e.g. {0: 'negative', 1: 'positive'}); string "
                       "labels need none")
    verbal = {label: label for label in labels}
  data = {split: format_records(records[split], path, input_template, target_field, verbal)
          for split, path in splits.items()}

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({k: tf.constant(v, tf.string)
                                               for k, v in data[split].items()})

  if verbal is not None:
    post = postprocessors.Verbalizer(list(dict.fromkeys(verbal.values())))
  elif set(metrics) & _NUMBER_METRICS:
    post = postprocessors.string_to_float
  else:
    post = None
  vocab = vocabulary or vocabularies.TASK_VOCABULARY
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=tuple(data),
                                      num_input_examples={k: len(v["inputs"])
                                                          for k, v in data.items()}),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(vocab, add_eos=True),
                       "targets": seqio.Feature(vocab, add_eos=True)},
      postprocess_fn=post, metric_fns=[METRICS[m] for m in metrics])
  return name


ENSEMBLE_SAMPLING = ("full", "bagging")


@registry.configurable
def ensemble_task(task: str, num_prompts: int, sampling: str = "full") -> str:
  """Registers a copy of `task` with a `task_index` in [0, N) per example; returns its name.

  For training an N-prompt PromptBank as an ensemble, then evaluated with
  `InferenceSpec.ensemble_prompts=N` (every prompt on every example, majority vote).
  sampling:
    "full" (`<task>_ensemble<N>`, the default, as in Lester et al. 2021,
      section 7): every example appears N times, once for each prompt, so
      each prompt trains on the full task; the prompts differ by their seeds
      (each bank row has its own initializer key and dropout masks).
    "bagging" (`<task>_bagged<N>`): each example goes to one prompt, chosen
      by a hash of its input, so each prompt sees its own 1/N of the data.
  """
  if num_prompts < 1:
    raise ValueError(f"num_prompts={num_prompts} must be at least 1")
  if sampling not in ENSEMBLE_SAMPLING:
    raise ValueError(f"ensemble_task sampling={sampling!r}; expected one of {ENSEMBLE_SAMPLING}")
  base = seqio.get_mixture_or_task(task)
  if not isinstance(base, seqio.Task):
    raise ValueError(f"ensemble_task needs a task, not the mixture {task!r}")
  name = f"{task}_{'ensemble' if sampling == 'full' else 'bagged'}{num_prompts}"
  if name in seqio.TaskRegistry.names():
    return name

  def every_prompt(ds):
    def copies(ex):
      return tf.data.Dataset.range(num_prompts).map(
          lambda i: {**ex, "task_index": tf.cast(i, tf.int32)})
    return ds.flat_map(copies)

  def one_prompt_by_hash(ds):
    def fn(ex):
      bucket = tf.strings.to_hash_bucket_fast(ex["inputs_pretokenized"], num_prompts)
      return {**ex, "task_index": tf.cast(bucket, tf.int32)}
    return ds.map(fn)

  add_index = every_prompt if sampling == "full" else one_prompt_by_hash
  seqio.TaskRegistry.add(name, source=base.source,
                         preprocessors=[*base.preprocessors, add_index],
                         output_features=base.output_features,
                         postprocess_fn=base.postprocess_fn, metric_fns=base.metric_fns)
  return name

  def add_index(ds):
    def fn(ex):
      bucket = tf.strings.to_hash_bucket_fast(ex["inputs_pretokenized"], num_prompts)
      return {**ex, "task_index": tf.cast(bucket, tf.int32)}
    return ds.map(fn)

  seqio.TaskRegistry.add(name, source=base.source,
                         preprocessors=[*base.preprocessors, add_index],
                         output_features=base.output_features,
                         postprocess_fn=base.postprocess_fn, metric_fns=base.metric_fns)
  return name
