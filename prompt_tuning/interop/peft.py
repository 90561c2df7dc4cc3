"""`prompt-tuning export-peft` / `import-peft`: prompts to and from PEFT adapter folders.

    prompt-tuning export-peft --prompt p.npy --checkpoint BACKBONE --out adapter/
    prompt-tuning import-peft --adapter adapter/ --checkpoint BACKBONE --out p.npy

An exported folder loads in PyTorch with
`PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(HF_FOLDER), "adapter/")`
and generates what this library's infer does: PEFT prepends the prompt to
the embedded encoder input with an all-ones mask, as the prefix SoftPrompt
does, and T5's relative positions run over prompt and input alike in both.
The backbone may be a T5X checkpoint or a Hugging Face folder; the adapter
belongs on the Hugging Face T5 with the same weights (the provenance
fingerprint is the same for both). This module is the commands' glue: the
folder format (reading, writing, its checks) is `prompt_tuning.readers.peft`,
and both commands check and write provenance sidecars
(`prompt_tuning.prompts.provenance`).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from prompt_tuning import readers
from prompt_tuning.prompts import provenance
from prompt_tuning.readers import peft as peft_format


def _check_width(prompt_PH: np.ndarray, source: str, width: int, checkpoint: str) -> None:
  if prompt_PH.ndim != 2 or prompt_PH.shape[1] != width:
    raise ValueError(f"{source} holds a prompt of shape {list(prompt_PH.shape)}, but the "
                     f"backbone {checkpoint} has width {width}: expected [P, {width}] "
                     "(a prompt for another model size; see `prompt-tuning recycle`)")


def _checked_prompt(source: str, checkpoint: str, width: int,
                    allow_backbone_mismatch: bool) -> tuple[str, np.ndarray]:
  """(the backbone's fingerprint, the prompt of `source`) once its provenance and width fit."""
  backbone = provenance.backbone_fingerprint(checkpoint)
  prompt = provenance.load_prompt(source, backbone, checkpoint, allow_backbone_mismatch)
  _check_width(prompt, source, width, checkpoint)
  return backbone, prompt


def _refuse_existing(path: str, overwrite: bool) -> None:
  if os.path.exists(path) and not overwrite and (not os.path.isdir(path) or os.listdir(path)):
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def export_peft(prompt_path: str, checkpoint: str, out_dir: str,
                base_model_name_or_path: Optional[str] = None,
                allow_backbone_mismatch: bool = False, overwrite: bool = False) -> dict:
  """Writes a prompt (.npy [P, H]) as a PEFT prompt-tuning adapter folder; returns its config.

  Args:
    prompt_path: the prompt; its provenance must name `checkpoint`'s backbone.
    checkpoint: the backbone it was trained on (T5X checkpoint or HF folder).
    out_dir: the adapter folder (`readers.peft`'s files plus a provenance sidecar).
    base_model_name_or_path: recorded for AutoPeftModel; default: the
      checkpoint's path when it is a Hugging Face folder.
  """
  _refuse_existing(out_dir, overwrite)
  config = readers.config_for(checkpoint)
  backbone, prompt = _checked_prompt(prompt_path, checkpoint, config.emb_dim,
                                     allow_backbone_mismatch)
  if base_model_name_or_path is None and readers.is_hf_folder(checkpoint):
    base_model_name_or_path = os.path.abspath(checkpoint)
  adapter = peft_format.write_adapter(out_dir, prompt, num_heads=config.num_heads,
                                      num_layers=config.num_encoder_layers,
                                      base_model_name_or_path=base_model_name_or_path)
  provenance.carry(prompt_path, out_dir, backbone, prompt, checkpoint,
                   exported_from=os.path.abspath(prompt_path))
  return adapter


def import_peft(adapter_dir: str, checkpoint: str, out_path: str,
                allow_backbone_mismatch: bool = False, overwrite: bool = False) -> np.ndarray:
  """Writes a PEFT prompt-tuning adapter's encoder prompt as a .npy [P, H]; returns it.

  Args:
    adapter_dir: a PEFT PROMPT_TUNING folder for a seq2seq T5.
    checkpoint: the backbone the prompt is for; its width must match, and
      the folder's provenance sidecar, if any, must name it.
    out_path: the .npy written (with its provenance sidecar).
  """
  _refuse_existing(out_path, overwrite)
  config = readers.config_for(checkpoint)
  adapter_config = peft_format.read_config(adapter_dir)  # Another method: refused here.
  peft_format.require_width(adapter_dir, adapter_config, config.emb_dim, checkpoint)
  backbone, prompt = _checked_prompt(adapter_dir, checkpoint, config.emb_dim,
                                     allow_backbone_mismatch)
  tmp = out_path + ".tmp.npy"
  np.save(tmp, prompt, allow_pickle=False)
  os.replace(tmp, out_path)
  provenance.carry(adapter_dir, out_path, backbone, prompt, checkpoint,
                   imported_from=os.path.abspath(adapter_dir))
  return prompt
