"""T5's span corruption (Raffel et al. 2020, section 3.1.4 and 3.3.4), in numpy.

The objective T5 was pretrained with, written after the paper and T5's
`span_corruption` preprocessor:

  * the token stream is cut into chunks of `tokens_length` (the longest
    length whose corrupted inputs fit `inputs_length`, EOS included:
    `chunk_lengths`);
  * round(length * noise_density) tokens of each chunk are noise, in
    round(noise / mean_span_length) spans (at least one); the noise and the
    non-noise tokens are each cut at uniformly random places into that many
    spans, and the spans alternate, non-noise first (`noise_mask`);
  * the inputs keep the non-noise tokens and replace each noise span with one
    sentinel; the targets hold each sentinel followed by the span it stands
    for. Sentinels are the vocabulary's extra ids, from the top down: the
    first span's is vocab_size - 1 (<extra_id_0>), the next vocab_size - 2.

Defaults are T5's: noise density 0.15, mean span length 3. EOS is appended
to inputs and targets afterwards (the seqio features' add_eos).
"""

from __future__ import annotations

import numpy as np

NOISE_DENSITY = 0.15
MEAN_SPAN_LENGTH = 3.0


def _lengths_after(tokens_length: int, noise_density: float, mean_span_length: float
                   ) -> tuple[int, int]:
  """(inputs, targets) lengths, each with its EOS, of a corrupted chunk."""
  noise = int(round(tokens_length * noise_density))
  spans = max(1, int(round(noise / mean_span_length)))
  return tokens_length - noise + spans + 1, noise + spans + 1


def chunk_lengths(inputs_length: int, noise_density: float = NOISE_DENSITY,
                  mean_span_length: float = MEAN_SPAN_LENGTH) -> tuple[int, int]:
  """(tokens_length, targets_length): the longest chunk whose corrupted inputs
  are exactly `inputs_length` or shorter, and its targets' length (T5's
  random_spans_helper)."""
  length = inputs_length
  while _lengths_after(length + 1, noise_density, mean_span_length)[0] <= inputs_length:
    length += 1
  return length, _lengths_after(length, noise_density, mean_span_length)[1]


def _segments(num_items: int, num_segments: int, rng: np.random.RandomState) -> np.ndarray:
  """Lengths of `num_segments` non-empty parts of `num_items` items, cut at random."""
  cuts = np.zeros(num_items, dtype=bool)
  cuts[1 + rng.permutation(num_items - 1)[:num_segments - 1]] = True
  segment = np.cumsum(cuts)
  return np.bincount(segment, minlength=num_segments)


def noise_mask(length: int, rng: np.random.RandomState, noise_density: float = NOISE_DENSITY,
               mean_span_length: float = MEAN_SPAN_LENGTH) -> np.ndarray:
  """[length] bool: which tokens are noise (T5's random_spans_noise_mask)."""
  noise = int(round(length * noise_density))
  noise = min(max(noise, 1), length - 1)
  spans = max(1, int(round(noise / mean_span_length)))
  noise_spans = _segments(noise, spans, rng)
  keep_spans = _segments(length - noise, spans, rng)
  # Interleave: keep, noise, keep, noise, ...
  lengths = np.stack([keep_spans, noise_spans], axis=1).reshape(-1)
  is_noise = np.repeat(np.tile([False, True], spans), lengths)
  return is_noise


def _runs_to_sentinels(tokens: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """`tokens` with each run of `mask` replaced by one sentinel: run i by vocab_size - 1 - i."""
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  sentinel = vocab_size - np.cumsum(starts)
  return np.where(starts, sentinel, tokens)[~mask | starts]


def corrupt(tokens: np.ndarray, mask: np.ndarray, vocab_size: int
            ) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of one chunk, without EOS (T5's noise_span_to_unique_sentinel
  and nonnoise_span_to_unique_sentinel).

  Inputs: the kept tokens, each noise span replaced by one sentinel. Targets:
  the noise tokens, each kept run replaced by one sentinel. Since the spans
  alternate kept-first and end on noise, the targets read
  "<extra_id_0> span_0 <extra_id_1> span_1 ...": the sentinel that stands
  for a span in the inputs comes right before it in the targets.
  """
  tokens = np.asarray(tokens)
  return _runs_to_sentinels(tokens, mask, vocab_size), _runs_to_sentinels(tokens, ~mask, vocab_size)


def corrupt_chunks(tokens: np.ndarray, inputs_length: int, vocab_size: int, seed: int,
                   noise_density: float = NOISE_DENSITY,
                   mean_span_length: float = MEAN_SPAN_LENGTH
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Cuts a token stream into chunks and corrupts each: ([N, I-1], [N, T-1]) int32.

  Every chunk has the same corrupted lengths (the noise count and span count
  depend only on the chunk length), so the results are rectangular; the
  last, shorter chunk is dropped. Chunk n's noise is drawn from
  RandomState(seed + n): a pure function of (stream, seed).
  """
  tokens_length, targets_length = chunk_lengths(inputs_length, noise_density, mean_span_length)
  n = len(tokens) // tokens_length
  chunks = np.asarray(tokens[:n * tokens_length], np.int32).reshape(n, tokens_length)
  ins = np.zeros((n, _lengths_after(tokens_length, noise_density, mean_span_length)[0] - 1),
                 np.int32)
  outs = np.zeros((n, targets_length - 1), np.int32)
  for i, chunk in enumerate(chunks):
    mask = noise_mask(tokens_length, np.random.RandomState(seed + i), noise_density,
                      mean_span_length)
    ins[i], outs[i] = corrupt(chunk, mask, vocab_size)
  return ins, outs
