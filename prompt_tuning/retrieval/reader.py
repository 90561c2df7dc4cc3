"""The frozen reader: Fusion-in-Decoder over retrieved passages (Levine et al. 2022, sec. 4).

The encoder input holds N segments of equal length S, one per retrieved
passage, each "(question, passage)" tokenized and padded on its own
(`retrieval.tasks.open_book_task` writes them). `FusionInDecoderT5` encodes
each (prompt, question, passage) separately with the frozen encoder (the
prompt module joins the prompt to every segment), then joins the N
encodings and their masks into one sequence [B, N * (P + S), H] that the
frozen decoder cross-attends to (Izacard and Grave 2021). Only the prompt,
and the optional re-ranker, train.

Re-ranking (optional, `num_candidates` > `num_passages`): the retriever
brings N candidates; `RetrievalPrompt`'s re-ranker scores each from the
frozen encoder's representation of its segment (masked mean, then a
two-layer MLP), the top k are kept, and each kept encoding is scaled by
2 * sigmoid(score) so that the decoder's loss reaches the re-ranker. That
gate is our departure (the paper trains its re-ranker with its own
objective); its last layer starts at zero, so the gate starts at 1.

Shape key: B batch, N segments, S segment length, P prompt length, M = P + S,
H model width, K kept passages.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models import layers
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import soft

Array = jax.Array
RERANK = "_rerank"  # prompt feature: (encoded [B, N, M, H], mask [B, N, M]) -> scores [B, N]


@registry.configurable
class RetrievalPrompt(soft.SoftPrompt):
  """A soft prompt for every (question, passage) segment, and an optional re-ranker.

  Attributes:
    rerank_width: hidden width of the re-ranker MLP (used only when the
      reader re-ranks, `FusionInDecoderT5.num_candidates` > num_passages).
  """
  rerank_width: int = 64

  @nn.compact
  def __call__(self, embedded_BLH: Optional[Array], tokens_BL: Optional[Array],
               mask_BL: Optional[Array], deterministic: bool = True, **features):
    if RERANK in features:
      encoded, mask = features[RERANK]
      weights = mask[..., None].astype(jnp.float32)
      pooled = (encoded.astype(jnp.float32) * weights).sum(2) / jnp.maximum(weights.sum(2), 1.0)
      hidden = nn.gelu(layers.Dense(self.rerank_width, ("embed", "generator"),
                                    name="rerank_hidden")(pooled))
      return layers.Dense(1, ("generator", "prompt"), kernel_init=nn.initializers.zeros,
                          name="rerank_score")(hidden)[..., 0]
    return super().__call__(embedded_BLH, tokens_BL, mask_BL, deterministic)


def _per_segment(features: Mapping[str, Any], b: int, n: int) -> dict[str, Any]:
  """Per-example batch features repeated for each of the N segments of a row."""
  return {k: jnp.repeat(v, n, axis=0) if getattr(v, "ndim", 0) and v.shape[0] == b else v
          for k, v in features.items()}


@registry.configurable
class FusionInDecoderT5(T5):
  """T5 reading N passages Fusion-in-Decoder style; decode/__call__ are T5's.

  Attributes:
    num_passages: k, the passages the decoder reads (a gin knob, NUM_PASSAGES).
    num_candidates: segments in the input; 0 means k (no re-ranking); more
      than k re-ranks them with the prompt module's re-ranker and keeps k.
  """
  num_passages: int = 1
  num_candidates: int = 0

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_features: Optional[Mapping[str, Array]] = None) -> tuple[Array, Array]:
    """Returns the joined encodings [B, K * M, H] and their mask [B, K * M]."""
    k = self.num_passages
    n = self.num_candidates or k
    b, length = encoder_input_tokens.shape
    if k < 1 or n < k:
      raise ValueError(f"FusionInDecoderT5: num_passages={k}, num_candidates={n}; expected "
                       "1 <= num_passages <= num_candidates")
    if length % n and self.is_initializing():  # Dummy init inputs: shapes only.
      encoder_input_tokens = jnp.pad(encoder_input_tokens, ((0, 0), (0, n - length % n)))
      length = encoder_input_tokens.shape[1]
    if length % n:
      raise ValueError(f"FusionInDecoderT5: an input of length {length} cannot hold {n} "
                       f"equal segments; TASK_FEATURE_LENGTHS['inputs'] must be {n} x the "
                       "segment length")
    segments = encoder_input_tokens.reshape(b * n, length // n)
    encoded, mask = self.encoder(segments, deterministic=not enable_dropout,
                                 prompt_features=_per_segment(prompt_features or {}, b, n))
    m, h = encoded.shape[1:]
    encoded, mask = encoded.reshape(b, n, m, h), mask.reshape(b, n, m)
    if n > k:
      if not isinstance(self.encoder_prompt, RetrievalPrompt):
        raise ValueError("Re-ranking (num_candidates > num_passages) needs the encoder prompt "
                         "RetrievalPrompt, which holds the re-ranker")
      scores = self.encoder_prompt(None, None, None, **{RERANK: (encoded, mask)})
      top, index = jax.lax.top_k(scores, k)
      encoded = jnp.take_along_axis(encoded, index[:, :, None, None], axis=1)
      mask = jnp.take_along_axis(mask, index[:, :, None], axis=1)
      encoded = encoded * (2.0 * jax.nn.sigmoid(top))[:, :, None, None].astype(encoded.dtype)
    return encoded.reshape(b, k * m, h), mask.reshape(b, k * m)
