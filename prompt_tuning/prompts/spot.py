"""SPoT (Vu et al. 2022): a library of source prompts, retrieval, and transfer.

"SPoT: Better Frozen Model Adaptation through Soft Prompt Transfer" (ACL
2022) initializes a target task's prompt from prompts trained on source
tasks, and picks the sources by task similarity: a prompt trained briefly on
the target task (a "probe", the paper's task embedding from an early
checkpoint) is compared with every source prompt by cosine similarity.

A library is a folder:

    LIBRARY/index.json   {"format": "prompt_tuning.spot_library", "version": 1,
                          "sources": [{"name": "mnli", "task": "glue_mnli_v002",
                                       "prompt": "mnli.npy"}, ...]}
    LIBRARY/mnli.npy     the source prompt, [P, H] float

Each source names the task it was trained on; `prompt` is relative to the
folder. Other keys in an entry (step, backbone, metrics) are kept and ignored.
`add_source` writes both (`prompt-tuning spot add`).

Similarity (the paper's two metrics for comparing task embeddings):
  "average"    cosine of the prompts' average tokens, cos(mean_i a_i, mean_j b_j)
               (the default);
  "per_token"  the average cosine over every pair of tokens,
               (1 / (P_a P_b)) sum_ij cos(a_i, b_j).
Both compare prompts of different lengths; the widths must match.

Transfer: the best source's prompt, or with top_k = k > 1 the paper's
"top-k weighted average": sum_i w_i P_i over the k most similar sources, with
w_i proportional to their similarity (negative similarities count as 0; if
none is positive, the k prompts are averaged evenly).

Shape key: P prompt length, H model width.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

INDEX = "index.json"
FORMAT = "prompt_tuning.spot_library"
METRICS = ("average", "per_token")


@dataclasses.dataclass(frozen=True)
class Source:
  """One trained source prompt of a library."""
  name: str
  task: str
  path: str  # absolute path of its .npy


def _read_npy(path: str, what: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} {path} does not exist")
  try:
    value = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"{what} {path} is not a plain numeric .npy array: {e}") from e
  if value.ndim != 2 or value.dtype.kind not in "fiu" or 0 in value.shape:
    raise ValueError(f"{what} {path} has shape {value.shape} and dtype {value.dtype}; "
                     "expected a non-empty [prompt length, model width] float array")
  return np.asarray(value, np.float32)


def read_library(library: str) -> list[Source]:
  """The sources listed in `library`/index.json, checked: names unique, files present."""
  index = os.path.join(library, INDEX)
  if not os.path.isdir(library):
    raise FileNotFoundError(f"SPoT library folder {library} does not exist")
  if not os.path.isfile(index):
    raise FileNotFoundError(f"SPoT library {library} has no {INDEX}; expected a folder with "
                            f"{INDEX} listing {{name, task, prompt}} per source "
                            "(`prompt-tuning spot add` writes one)")
  try:
    with open(index, encoding="utf-8") as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"SPoT library index {index} is not valid JSON: {e}") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"{index} is not a SPoT library index: expected an object with "
                     f'"format": "{FORMAT}" and a "sources" list')
  entries = meta.get("sources")
  if not isinstance(entries, list):
    raise ValueError(f'{index}: "sources" must be a list of {{name, task, prompt}} objects')
  if not entries:
    raise ValueError(f"SPoT library {library} is empty: {index} lists no source prompts")
  sources, names = [], set()
  for n, entry in enumerate(entries):
    missing = [k for k in ("name", "task", "prompt")
               if not isinstance(entry, dict) or not isinstance(entry.get(k), str)]
    if missing:
      raise ValueError(f"{index}: source {n} lacks the string field(s) {missing}; each source "
                       'is {"name": ..., "task": ..., "prompt": "file.npy"}')
    if entry["name"] in names:
      raise ValueError(f"{index}: source name {entry['name']!r} appears twice")
    names.add(entry["name"])
    path = os.path.join(os.path.abspath(library), entry["prompt"])
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{index}: source {entry['name']!r} names prompt {path}, which "
                              "does not exist")
    sources.append(Source(entry["name"], entry["task"], path))
  return sources


def load_prompts(sources: Sequence[Source]) -> list[np.ndarray]:
  """Each source's [P, H] prompt; every width must be the same."""
  prompts = [_read_npy(s.path, f"Source prompt {s.name!r}:") for s in sources]
  widths = {p.shape[1] for p in prompts}
  if len(widths) > 1:
    detail = ", ".join(f"{s.name} {p.shape}" for s, p in zip(sources, prompts))
    raise ValueError(f"The library's prompts have different widths ({detail}); a library "
                     "holds prompts of one backbone")
  return prompts


def _unit(x: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norm, 1e-12)


def similarity(a_PH: np.ndarray, b_PH: np.ndarray, metric: str = "average") -> float:
  """Cosine similarity of two prompts as task embeddings (see the module docstring)."""
  if metric not in METRICS:
    raise ValueError(f"Unknown SPoT similarity {metric!r}; expected one of {METRICS}")
  a, b = np.asarray(a_PH, np.float64), np.asarray(b_PH, np.float64)
  if metric == "average":
    return float(_unit(a.mean(axis=0)) @ _unit(b.mean(axis=0)))
  return float(np.mean(_unit(a) @ _unit(b).T))


def load_probe(probe: str | np.ndarray) -> np.ndarray:
  """The probe prompt ([P, H]) from a .npy path or an array."""
  if isinstance(probe, str):
    return _read_npy(probe, "Probe prompt")
  value = np.asarray(probe, np.float32)
  if value.ndim != 2:
    raise ValueError(f"Probe prompt has shape {value.shape}; expected [prompt length, width]")
  return value


def rank(library: str, probe: str | np.ndarray, metric: str = "average"
         ) -> list[tuple[Source, float]]:
  """(source, similarity) for every source, most similar first (ties: index order)."""
  if metric not in METRICS:
    raise ValueError(f"Unknown SPoT similarity {metric!r}; expected one of {METRICS}")
  probe_PH = load_probe(probe)
  sources = read_library(library)
  prompts = load_prompts(sources)
  width = prompts[0].shape[1]
  if probe_PH.shape[1] != width:
    raise ValueError(f"Probe prompt has shape {probe_PH.shape} (width {probe_PH.shape[1]}) but "
                     f"the library's prompts have width {width}; the probe must be trained on "
                     "the same backbone as the sources")
  scored = [(s, similarity(probe_PH, p, metric)) for s, p in zip(sources, prompts)]
  order = sorted(range(len(scored)), key=lambda i: (-scored[i][1], i))
  return [scored[i] for i in order]


def transfer(library: str, probe: str | np.ndarray, top_k: int = 1,
             metric: str = "average") -> tuple[np.ndarray, list[tuple[Source, float]]]:
  """The initial target prompt [P, H] and the (source, weight) pairs that made it."""
  if top_k < 1:
    raise ValueError(f"top_k={top_k} must be at least 1")
  ranked = rank(library, probe, metric)[:top_k]
  prompts = [_read_npy(s.path, f"Source prompt {s.name!r}:") for s, _ in ranked]
  shapes = {p.shape for p in prompts}
  if len(shapes) > 1:
    detail = ", ".join(f"{s.name} {p.shape}" for (s, _), p in zip(ranked, prompts))
    raise ValueError(f"Cannot average the top {top_k} sources: their shapes differ ({detail})")
  sims = np.maximum(np.asarray([score for _, score in ranked], np.float64), 0.0)
  weights = sims / sims.sum() if sims.sum() > 0 else np.full(len(ranked), 1.0 / len(ranked))
  mixed = np.tensordot(weights, np.stack(prompts).astype(np.float64), axes=1)
  return mixed.astype(np.float32), [(s, float(w)) for (s, _), w in zip(ranked, weights)]


def add_source(library: str, name: str, task: str, prompt: str | np.ndarray,
               overwrite: bool = False, **extra: Any) -> Source:
  """Copies a prompt into `library` (created if needed) and lists it in the index."""
  value = _read_npy(prompt, "Prompt") if isinstance(prompt, str) else load_probe(prompt)
  if not name or os.sep in name or name.startswith("."):
    raise ValueError(f"Source name {name!r} must be a plain file name (no '/', not hidden)")
  os.makedirs(library, exist_ok=True)
  index = os.path.join(library, INDEX)
  meta: dict[str, Any] = {"format": FORMAT, "version": 1, "sources": []}
  if os.path.exists(index):
    # A malformed index is reported, never overwritten.
    width = load_prompts(read_library(library))[0].shape[1]
    if value.shape[1] != width:
      raise ValueError(f"Prompt has width {value.shape[1]}; the library {library} holds "
                       f"prompts of width {width}")
    with open(index, encoding="utf-8") as f:
      meta = json.load(f)
  entries = [e for e in meta["sources"] if e["name"] != name]
  if len(entries) != len(meta["sources"]) and not overwrite:
    raise FileExistsError(f"Source {name!r} is already in {library}; pass overwrite to "
                          "replace it")
  file = f"{name}.npy"
  tmp = os.path.join(library, f".{file}.tmp.npy")
  np.save(tmp, value, allow_pickle=False)
  os.replace(tmp, os.path.join(library, file))
  entries.append(dict(name=name, task=task, prompt=file, **extra))
  meta["sources"] = entries
  tmp = index + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, index)
  return Source(name, task, os.path.join(os.path.abspath(library), file))


def format_ranking(ranked: Sequence[tuple[Source, float]]) -> str:
  """The ranking as an aligned table: rank, cosine, name, task."""
  width = max(len(s.name) for s, _ in ranked)
  lines = [f"{'rank':>4}  {'cosine':>8}  {'source':<{width}}  task"]
  lines += [f"{i:>4}  {score:>8.4f}  {s.name:<{width}}  {s.task}"
            for i, (s, score) in enumerate(ranked, 1)]
  return "\n".join(lines)
