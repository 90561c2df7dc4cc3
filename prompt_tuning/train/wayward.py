"""Wayward prompts: a loss term keeping the soft prompt near an embedded text.

Khashabi et al. (2022), "Prompt Waywardness: The Curious Case of Discretized
Interpretation of Continuous Prompts" (NAACL), train a continuous prompt p
with the task loss plus a pull toward the embedding of a chosen discrete
prompt p_d:

    L(p) = L_task(p) + gamma * ||p - E(p_d)||^2

where E looks each token of p_d up in the frozen model's embedding table,
and p has as many positions as p_d has tokens (the original library's gin
file sets PROMPT_LENGTH to the text's piece count). This module follows the
original prompt-tuning library's implementation (extended/train/wayward.py)
in two details users of it will expect:

- the squared distance is summed over the model width and averaged over the
  P prompt positions, (1/P) sum_p ||P_p - E_p||^2, so that gamma (default
  0.01 there and here) does not scale with the prompt length;
- a text shorter than the prompt leaves the remaining positions' target at
  zero (the library builds the target with a zeros-filled initializer).

A text longer than the prompt is an error here (the library silently cut it,
which regularizes toward a text the user did not give).

Shape key: P prompt length, H model width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import registry
from prompt_tuning import trees as tree_lib

Array = jax.Array
EMBEDDING_PARAM = "token_embedder/embedding"


@registry.configurable
@dataclasses.dataclass(frozen=True)
class Wayward:
  """The wayward term's settings (gin: `LossSpec.wayward = @Wayward()`).

  Attributes:
    text: the discrete prompt p_d, tokenized with the task's input
      vocabulary (no EOS), embedded with the backbone's frozen table.
    gamma: the term's weight.
    prompt_param: the '/'-joined path of the [P, H] prompt parameter (a
      SoftPrompt on the encoder by default).
  """
  text: str
  gamma: float = 0.01
  prompt_param: str = "encoder_prompt/prompt"

  def __post_init__(self):
    if not self.text:
      raise ValueError("Wayward.text is empty; give the discrete prompt to stay near")
    if self.gamma < 0:
      raise ValueError(f"Wayward.gamma={self.gamma} must be >= 0")


def target(text: str, vocabulary: Any, table_VH: Any, prompt_length: int) -> np.ndarray:
  """E(text) as a [P, H] target: the text's token embeddings, then zero rows.

  Raises:
    ValueError: the text has more tokens than the prompt has positions, or
      a token id beyond the table.
  """
  ids = vocabulary.encode(text)
  ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
  if len(ids) > prompt_length:
    raise ValueError(
        f"Wayward text {text!r} is {len(ids)} tokens long but the prompt has {prompt_length} "
        f"positions; the prompt must be at least as long as the text (Khashabi et al. give "
        f"the prompt the text's length: set PROMPT_LENGTH = {len(ids)}, or shorten the text)")
  rows, width = table_VH.shape
  if ids and max(ids) >= rows:
    raise ValueError(f"Wayward text {text!r} has token id {max(ids)} beyond the "
                     f"{rows}-row embedding table")
  out = np.zeros((prompt_length, width), np.float32)
  if ids:  # Only the text's rows leave the device, never the whole table.
    out[:len(ids)] = np.asarray(jax.device_get(table_VH[np.asarray(ids)]), np.float32)
  return out


def distance(prompt_PH: Array, target_PH: Array) -> Array:
  """(1/P) sum over positions of the squared L2 distance."""
  diff = prompt_PH.astype(jnp.float32) - target_PH.astype(jnp.float32)
  return jnp.sum(jnp.square(diff)) / prompt_PH.shape[0]


def prompt_of(trainable: Any, path: str) -> Array:
  """The [P, H] prompt at `path` in the trainable tree, with a clear error if absent."""
  flat = tree_lib.flatten(trainable)
  if path not in flat:
    prompts = sorted(k for k in flat if "prompt" in k) or sorted(flat)[:8]
    raise ValueError(f"Wayward.prompt_param={path!r} is not a trainable parameter; trainable "
                     f"prompt parameters: {prompts}")
  value = flat[path]
  if value.ndim != 2:
    raise ValueError(f"Wayward.prompt_param={path!r} has shape {tuple(value.shape)}; the "
                     "wayward term needs a [P, H] soft prompt")
  return value


def resolve(config: Wayward, trainable: Any, frozen: Any, vocabulary: Any
            ) -> tuple[str, np.ndarray, float]:
  """(prompt path, E(text) [P, H] on the host, gamma) for the train step."""
  prompt = prompt_of(trainable, config.prompt_param)
  tables: Mapping[str, Any] = {**tree_lib.flatten(frozen), **tree_lib.flatten(trainable)}
  if EMBEDDING_PARAM not in tables:
    raise ValueError(f"The model has no {EMBEDDING_PARAM!r} table to embed the wayward text")
  table = tables[EMBEDDING_PARAM]
  if table.shape[1] != prompt.shape[1]:
    raise ValueError(f"Embedding width {table.shape[1]} differs from the prompt's "
                     f"{prompt.shape[1]}")
  return (config.prompt_param, target(config.text, vocabulary, table, prompt.shape[0]),
          float(config.gamma))
