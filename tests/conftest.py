"""Shared test setup: strict numerics, tiny configs, the shared fixtures policy.

Fixtures live in ../shared/fixtures (never copied into the repo). A test that
needs one is skipped with the reason when the folder is absent, and fails
instead when PT_REQUIRE_FIXTURES=1 (CI sets it).
"""

import os

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

from prompt_tuning.models.t5 import T5Config  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("PT_FIXTURES_DIR",
                          os.path.join(os.path.dirname(REPO_ROOT), "shared", "fixtures"))


def fixture_path(*parts: str) -> str:
  """Absolute path of a shared fixture; skips (or fails under CI) when absent."""
  path = os.path.join(FIXTURES, *parts)
  if not os.path.exists(path):
    message = (f"shared fixture {os.path.join(*parts)} not found under {FIXTURES} "
               "(the ../shared checkout is absent)")
    if os.environ.get("PT_REQUIRE_FIXTURES") == "1":
      pytest.fail(message + "; PT_REQUIRE_FIXTURES=1 requires it")
    pytest.skip(message)
  return path


# The architecture of ../shared/fixtures/t5x_tiny_checkpoint (see its README).
TINY_T5X_CONFIG = T5Config(vocab_size=32128, emb_dim=4, num_heads=2, num_encoder_layers=2,
                           num_decoder_layers=2, head_dim=2, mlp_dim=8,
                           relative_attention_num_buckets=4, relative_attention_max_distance=8)
# ../shared/fixtures/t5x_inline_checkpoint.
INLINE_T5X_CONFIG = T5Config(vocab_size=32128, emb_dim=8, num_heads=4, num_encoder_layers=2,
                             num_decoder_layers=2, head_dim=3, mlp_dim=16)

# A small random model for tests that need no checkpoint.
TINY_CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
                       num_decoder_layers=2, head_dim=8, mlp_dim=32,
                       relative_attention_num_buckets=8, relative_attention_max_distance=16)


@pytest.fixture
def tiny_config():
  return TINY_CONFIG


def files_digest(path: str, suffix: str = "") -> str:
  """SHA-256 of a file, or of a folder's files (names and contents, in a fixed order);
  with `suffix`, only the folder's files whose names end with it."""
  import hashlib
  h = hashlib.sha256()
  if os.path.isfile(path):
    with open(path, "rb") as f:
      h.update(f.read())
    return h.hexdigest()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(n for n in files if n.endswith(suffix)):
      with open(os.path.join(root, name), "rb") as f:
        h.update(os.path.relpath(os.path.join(root, name), path).encode() + b"\0" + f.read())
  return h.hexdigest()
