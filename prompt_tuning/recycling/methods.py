"""Recycling methods (Lester et al. 2022): map a prompt between embedding spaces.

Each method is fitted on the two models' embeddings of a shared support
vocabulary (source S [N, Hs], target T [N, Ht]) and then applied to any
number of prompts [P, Hs] -> [P, Ht]. No task data, no paired prompts, no
training on the target model.

  linear              W = argmin ||S W - T||: the prompt maps as p W.
  mlp                 Dense(4 Ht) -> ReLU -> Dense(Ht), trained on S -> T
                      (minibatches, early stopping on held-out support rows).
  linear_combination  each prompt row as a least-squares combination of the
                      source support embeddings; the same weights applied to
                      the target support embeddings. With exact minimum-norm
                      least squares this is the same map as `linear`: both
                      are p S+ T. It is kept as the paper's separate method;
                      it differs only under regularized or iterative fits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

METHODS = ("linear", "mlp", "linear_combination")


@dataclasses.dataclass
class Recycler:
  """A fitted map from source to target embedding space."""
  method: str
  source_width: int
  target_width: int
  apply_fn: Callable[[np.ndarray], np.ndarray]
  # The two backbones' provenance fingerprints, when fitted between checkpoints.
  source_fingerprint: Optional[str] = None
  target_fingerprint: Optional[str] = None

  def __call__(self, prompt_PH: np.ndarray) -> np.ndarray:
    prompt_PH = np.asarray(prompt_PH)
    if prompt_PH.ndim != 2 or prompt_PH.shape[1] != self.source_width:
      raise ValueError(f"Prompt of shape {prompt_PH.shape} does not fit the source model: "
                       f"expected [prompt length, {self.source_width}]")
    return np.asarray(self.apply_fn(prompt_PH.astype(np.float32)), np.float32)


def _check_support(source_NH: np.ndarray, target_NH: np.ndarray) -> None:
  if source_NH.ndim != 2 or target_NH.ndim != 2 or len(source_NH) != len(target_NH):
    raise ValueError(f"Support embeddings must be [N, H] with the same N; got "
                     f"{source_NH.shape} and {target_NH.shape}")


def fit_linear(source_NH: np.ndarray, target_NH: np.ndarray) -> Recycler:
  _check_support(source_NH, target_NH)
  s64, t64 = source_NH.astype(np.float64), target_NH.astype(np.float64)
  # Normal equations (S^T S) W = S^T T: one [H, H] solve instead of an SVD of
  # the whole support; lstsq when the support does not determine W.
  gram = s64.T @ s64
  try:
    if len(s64) < s64.shape[1]:
      raise np.linalg.LinAlgError("fewer support rows than dimensions")
    np.linalg.cholesky(gram)  # Raises unless positive definite.
    w = np.linalg.solve(gram, s64.T @ t64)
  except np.linalg.LinAlgError:
    w, *_ = np.linalg.lstsq(s64, t64, rcond=None)
  w = w.astype(np.float32)
  return Recycler("linear", source_NH.shape[1], target_NH.shape[1], lambda p: p @ w)


def fit_linear_combination(source_NH: np.ndarray, target_NH: np.ndarray) -> Recycler:
  _check_support(source_NH, target_NH)
  # Rows of the prompt as combinations of support rows: p = a S, a = p pinv(S).
  pinv = np.linalg.pinv(source_NH.astype(np.float64))  # [Hs, N]
  target = target_NH.astype(np.float64)
  return Recycler("linear_combination", source_NH.shape[1], target_NH.shape[1],
                  lambda p: (p.astype(np.float64) @ pinv) @ target)


def fit_mlp(source_NH: np.ndarray, target_NH: np.ndarray, steps: int = 2000,
            learning_rate: float = 1e-3, seed: int = 0, batch_size: int = 256,
            held_out: float = 0.1, eval_every: int = 50) -> Recycler:
  """Dense(4H) -> ReLU -> Dense(H) trained with Adam on the support pairs.

  Minibatches of `batch_size` rows, at most `steps` steps, and early stopping:
  a seeded `held_out` share of the support (at least one row) is kept out of
  training, scored every `eval_every` steps, and the parameters of the best
  score are the recycler's. An MLP of 4 Ht hidden units has more parameters
  than a few thousand support rows can pin down: trained on all of them, full
  batch, for 2,000 steps, its error on held-out support rows rose while its
  training error fell (miniature m -> l: 2.09 in unit scale, against 1.14 at
  the best step; the linear map: 1.03), and it cost 30 times the time.
  """
  _check_support(source_NH, target_NH)
  hs, ht = source_NH.shape[1], target_NH.shape[1]
  rng = np.random.RandomState(seed)
  order = rng.permutation(len(source_NH))
  n_held = max(1, int(round(held_out * len(order)))) if len(order) > 1 else 0
  held, fit_rows = order[:n_held], order[n_held:]
  # Standardize inputs and outputs (statistics of the rows trained on); the MLP
  # learns in unit scale.
  mu_s, sd_s = source_NH[fit_rows].mean(0), source_NH[fit_rows].std(0) + 1e-6
  mu_t, sd_t = target_NH[fit_rows].mean(0), target_NH[fit_rows].std(0) + 1e-6
  scale = lambda a, mu, sd: jnp.asarray((a - mu) / sd, jnp.float32)  # noqa: E731
  x, y = scale(source_NH[fit_rows], mu_s, sd_s), scale(target_NH[fit_rows], mu_t, sd_t)
  x_held, y_held = scale(source_NH[held], mu_s, sd_s), scale(target_NH[held], mu_t, sd_t)
  k1, k2, k_batches = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {"w1": jax.random.normal(k1, (hs, 4 * ht)) * np.sqrt(2.0 / hs),
            "b1": jnp.zeros((4 * ht,)),
            "w2": jax.random.normal(k2, (4 * ht, ht)) * np.sqrt(1.0 / (4 * ht)),
            "b2": jnp.zeros((ht,))}

  def forward(p, v):
    h = jax.nn.relu(v @ p["w1"] + p["b1"][None])
    return h @ p["w2"] + p["b2"][None]

  opt = optax.adam(learning_rate)
  batch = min(batch_size, x.shape[0])

  @jax.jit
  def train_chunk(params, opt_state, keys):
    """`len(keys)` minibatch steps, then the held-out error of the result."""
    def body(carry, key):
      p, s = carry
      idx = jax.random.randint(key, (batch,), 0, x.shape[0])
      g = jax.grad(lambda q: jnp.mean((forward(q, x[idx]) - y[idx]) ** 2))(p)
      updates, s = opt.update(g, s, p)
      return (optax.apply_updates(p, updates), s), None
    (params, opt_state), _ = jax.lax.scan(body, (params, opt_state), keys)
    error = (jnp.mean((forward(params, x_held) - y_held) ** 2) if n_held else jnp.float32(0))
    return params, opt_state, error

  opt_state, best, best_error = opt.init(params), params, np.inf
  keys = jax.random.split(k_batches, max(steps, 1))
  for start in range(0, steps, eval_every):
    params, opt_state, error = train_chunk(params, opt_state, keys[start:start + eval_every])
    if float(error) < best_error:
      best, best_error = params, float(error)
  params = jax.device_get(best)

  def apply(p):
    return np.asarray(forward(params, jnp.asarray((p - mu_s) / sd_s))) * sd_t + mu_t
  return Recycler("mlp", hs, ht, apply)


def fit(method: str, source_NH: np.ndarray, target_NH: np.ndarray, **kwargs) -> Recycler:
  fns = {"linear": fit_linear, "mlp": fit_mlp, "linear_combination": fit_linear_combination}
  if method not in fns:
    raise ValueError(f"Unknown recycling method {method!r}; expected one of {METHODS}")
  return fns[method](source_NH, target_NH, **kwargs)


# Fitted recyclers, reused across prompts: (source, target, method, support) -> Recycler.
_CACHE: dict[tuple, Recycler] = {}


def recycler_for(source_checkpoint: str, target_checkpoint: str, method: str,
                 support: Optional[np.ndarray] = None, filter_file: Optional[str] = None,
                 skip: int = 1000, take: Optional[int] = 4000) -> Recycler:
  """A fitted recycler between two checkpoints (T5X or HF), read only for their
  embedding tables; cached per (checkpoints, method, support)."""
  # The key is the request itself, so a cached recycler costs no table read.
  key = (source_checkpoint, target_checkpoint, method,
         None if support is None else np.asarray(support).tobytes(),
         filter_file if support is None else None, skip, take)
  if key in _CACHE:
    return _CACHE[key]
  from prompt_tuning.prompts.initializers import load_embeddings
  from prompt_tuning.recycling import support as support_lib
  source = load_embeddings(source_checkpoint)
  target = load_embeddings(target_checkpoint)
  if support is None:
    ids = support_lib.load_filter(filter_file) if filter_file else None
    support = support_lib.support_ids([len(source), len(target)], ids, skip, take)
  else:
    support = support_lib.support_ids([len(source), len(target)], support, 0, len(support))
  recycler = fit(method, source[support], target[support])
  recycler.source_fingerprint = _fingerprint(source_checkpoint, source)
  recycler.target_fingerprint = _fingerprint(target_checkpoint, target)
  _CACHE[key] = recycler
  return recycler


def _fingerprint(checkpoint: str, table: np.ndarray) -> Optional[str]:
  """A checkpoint's provenance fingerprint from the table just read (None for a .npy table)."""
  if checkpoint.endswith(".npy"):
    return None
  from prompt_tuning import readers
  from prompt_tuning.prompts import provenance
  return provenance.fingerprint(readers.config_for(checkpoint), table)


def recycle(prompt_PH: Any, source_checkpoint: str, target_checkpoint: str,
            method: str = "linear", allow_backbone_mismatch: bool = False,
            **support_kwargs) -> np.ndarray:
  """Recycles one prompt from source to target model.

  A prompt given by path (a .npy or a PEFT adapter folder) must have been
  trained on the source backbone, as its provenance sidecar says (see
  `provenance.check`), unless `allow_backbone_mismatch`.
  """
  from prompt_tuning.prompts import provenance
  path = prompt_PH if isinstance(prompt_PH, str) else None
  prompt = provenance.read_prompt(path) if path else np.asarray(prompt_PH)  # Errors first.
  recycler = recycler_for(source_checkpoint, target_checkpoint, method, **support_kwargs)
  if path:
    provenance.check(path, prompt, recycler.source_fingerprint,
                     source_checkpoint if recycler.source_fingerprint else None,
                     allow_backbone_mismatch)
  return recycler(prompt)
