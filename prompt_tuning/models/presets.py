"""T5 sizes as T5Config presets: the published ones (T5 1.1 / LM-adapted / Flan,
T5 1.0, mT5, umT5) and the quickstart's synthetic backbones.

The one source of model sizes: the gin files under configs/sizes and
configs/models bind the same numbers, and tests/test_model.py checks every
models/<family>_<size>.gin against `preset(family, size)`.
"""

from __future__ import annotations

from prompt_tuning.models.t5 import T5Config

# (emb_dim, num_heads, num_layers, head_dim, mlp_dim); encoder and decoder
# have the same depth in every published size.
T5_1_1_SIZES = {
    "small": (512, 6, 8, 64, 1024),
    "base": (768, 12, 12, 64, 2048),
    "large": (1024, 16, 24, 64, 2816),
    "xl": (2048, 32, 24, 64, 5120),
    "xxl": (4096, 64, 24, 64, 10240),
}
T5_1_0_SIZES = {
    "small": (512, 8, 6, 64, 2048),
    "base": (768, 12, 12, 64, 3072),
    "large": (1024, 16, 24, 64, 4096),
    "3B": (1024, 32, 24, 128, 16384),
    "11B": (1024, 128, 24, 128, 65536),
}
# The quickstart's backbones over the byte vocabulary (384 rows: 256 bytes
# plus seqio's specials, see prompt_tuning.tasks.synthetic).
SYNTHETIC_SIZES = {
    "tiny": (64, 4, 2, 16, 128),
    "small": (128, 4, 3, 32, 256),
    # The research suite's third size: about 3.5x small's parameters, still
    # pretrained in minutes on two CPU cores.
    "medium": (192, 4, 4, 48, 512),
}
# The real-language miniature (prompt_tuning.miniature): T5 1.1 layout over
# its own 8,000-piece SentencePiece vocabulary plus 100 sentinels (8,100 ids,
# rounded up to 8,192 rows as T5 rounds 32,100 to 32,128); 31x in parameters
# from the smallest to the largest.
MINIATURE_SIZES = {
    "xs": (16, 2, 1, 8, 32),
    "s": (48, 4, 2, 12, 128),
    "m": (96, 4, 3, 24, 256),
    "l": (192, 6, 4, 32, 768),
}
FAMILIES = {
    # family: (size table, overrides)
    "t5_1_1": (T5_1_1_SIZES, dict(vocab_size=32128, mlp_activations=("gelu", "linear"),
                                  logits_via_embedding=False)),
    "t5_1_0": (T5_1_0_SIZES, dict(vocab_size=32128, mlp_activations=("relu",),
                                  logits_via_embedding=True)),
    "mt5": (T5_1_1_SIZES, dict(vocab_size=250112, mlp_activations=("gelu", "linear"),
                               logits_via_embedding=False)),
    "umt5": (T5_1_1_SIZES, dict(vocab_size=256384, mlp_activations=("gelu", "linear"),
                                logits_via_embedding=False, shared_relative_bias=False)),
    "synthetic": (SYNTHETIC_SIZES, dict(vocab_size=384, mlp_activations=("gelu", "linear"),
                                        logits_via_embedding=False,
                                        relative_attention_num_buckets=16,
                                        relative_attention_max_distance=32)),
    "miniature": (MINIATURE_SIZES, dict(vocab_size=8192, mlp_activations=("gelu", "linear"),
                                        logits_via_embedding=False)),
}


def preset(family: str, size: str, **overrides) -> T5Config:
  """Returns the T5Config of a published model, e.g. preset("t5_1_1", "base")."""
  if family not in FAMILIES:
    raise ValueError(f"Unknown T5 family {family!r}; expected one of {sorted(FAMILIES)}")
  sizes, family_kwargs = FAMILIES[family]
  if size not in sizes:
    raise ValueError(f"Unknown size {size!r} for {family}; expected one of {sorted(sizes)}")
  emb, heads, layers, head_dim, mlp = sizes[size]
  kwargs = dict(emb_dim=emb, num_heads=heads, num_encoder_layers=layers,
                num_decoder_layers=layers, head_dim=head_dim, mlp_dim=mlp, **family_kwargs)
  kwargs.update(overrides)
  return T5Config(**kwargs)
