"""Recursive LMs: textual and neural recursion through one frozen T5."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding
from prompt_tuning import trees as tree_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers, recursive, soft
from prompt_tuning.runtime import setup as setup_lib
from prompt_tuning.runtime.specs import ModelSpec
from prompt_tuning.runtime import freezing
from prompt_tuning.train import step as step_lib
from tests.toy_runs import (CFG, exported, fixture_arrays, run_binary, summary, toy_batch,
                               train_in_process)
from tests.test_binaries import t5x_fixture_digest


def test_append_tokens_puts_the_answer_after_each_rows_real_tokens():
  tokens = jnp.asarray([[5, 6, 1, 0], [7, 1, 0, 0]], jnp.int32)
  answer = jnp.asarray([[8, 9, 0], [4, 0, 3]], jnp.int32)
  np.testing.assert_array_equal(np.asarray(recursive.append_tokens(tokens, answer)),
                                [[5, 6, 1, 8, 9, 0, 0], [7, 1, 4, 0, 0, 0, 0]])


def _textual(train_pass=2, a=3):
  return ModelSpec(CFG, encoder_prompt=recursive.RecursionPrompts(length=2),
                   model_class=functools.partial(recursive.TextualRecursionT5, answer_length=a,
                                                 train_pass=train_pass))


def test_textual_recursion_decodes_with_prompt_1_then_reads_input_and_answer_with_prompt_2():
  built = setup_lib.build(_textual())
  params = freezing.merge(built.trainable, built.frozen)
  tokens = toy_batch(4)["encoder_input_tokens"]
  model = built.model
  answer = model.apply({"params": params}, tokens, method=model.intermediate_answer)
  # Reference: plain T5 with prompt 1 as a soft prompt, greedy, no cache.
  backbone = {k: v for k, v in params.items() if k != "encoder_prompt"}
  first = soft.SoftPrompt(length=2, init=lambda *a: params["encoder_prompt"]["first"])
  ref_model = T5(CFG, encoder_prompt=first)
  ref_params = {**backbone, "encoder_prompt": {"prompt": params["encoder_prompt"]["first"]}}
  ref, _ = decoding.generate(ref_model, ref_params, tokens, decoding.DecodingConfig(
      max_decode_length=3, use_cache=False))
  ref = np.where(np.asarray(ref) == 1, 0, np.asarray(ref))  # EOS dropped from the answer
  np.testing.assert_array_equal(np.asarray(answer), np.where(
      np.cumsum(ref == 0, axis=1) > 0, 0, ref))
  enc, mask = model.apply({"params": params}, tokens, method=model.encode)
  second_model = T5(CFG, encoder_prompt=soft.SoftPrompt(length=2))
  ref_enc, ref_mask = second_model.apply(
      {"params": {**backbone, "encoder_prompt": {"prompt": params["encoder_prompt"]["second"]}}},
      recursive.append_tokens(tokens, answer), method=second_model.encode)
  np.testing.assert_allclose(np.asarray(enc), np.asarray(ref_enc), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))


def test_freeze_first_keeps_prompt_1_as_given_and_frozen_under_the_default_rules():
  first = (np.arange(2 * CFG.emb_dim, dtype=np.float32).reshape(2, CFG.emb_dim) - 5) / 50
  spec = ModelSpec(CFG, encoder_prompt=recursive.RecursionPrompts(
      length=2, freeze_first=True, first_init=initializers.from_array(first)),
                   model_class=functools.partial(recursive.TextualRecursionT5, answer_length=3))
  built = setup_lib.build(spec)
  assert set(tree_lib.flatten(built.trainable)) == {"encoder_prompt/second"}
  np.testing.assert_array_equal(np.asarray(tree_lib.flatten(built.frozen)["encoder_prompt/first"]),
                                first)
  assert set(tree_lib.flatten(setup_lib.build(_textual()).trainable)) == {
      "encoder_prompt/first", "encoder_prompt/second"}


def _neural():
  return ModelSpec(CFG, encoder_prompt=recursive.RecursionPrompts(
      length=2, neural=True, connector_width=8, num_heads=2, mlp_dim=8),
                   model_class=recursive.NeuralRecursionT5)


def test_neural_recursion_gradients_reach_the_connector_through_both_passes_and_nothing_else():
  built = setup_lib.build(_neural())
  trainable = tree_lib.flatten(built.trainable)
  assert "encoder_prompt/first" in trainable
  assert all(k == "encoder_prompt/first" or k.startswith("encoder_prompt/connector/")
             for k in trainable)
  batch = toy_batch(4)
  grads = jax.grad(lambda t: step_lib.loss_fn(t, built.frozen, built.model, batch, None,
                                              1e-4)[0])(built.trainable)
  norms = {k: float(jnp.linalg.norm(v)) for k, v in tree_lib.flatten(grads).items()}
  assert set(norms) == set(trainable)
  # Prompt 1 is read only by pass 1, whose output reaches the loss only through
  # the connector and pass 2: a gradient there crossed both passes.
  assert norms["encoder_prompt/first"] > 0
  assert all(v > 0 for k, v in norms.items() if "/kernel" in k or k.endswith("queries")), norms


@pytest.mark.parametrize("kind", ["neural", "textual"])
def test_each_recursion_learns_a_tiny_case_and_only_its_parameters_change(kind):
  spec = _neural() if kind == "neural" else _textual()
  s, trained, losses = train_in_process(spec, toy_batch(), steps=30, lr=0.3)
  # Textual recursion trains only a [2, H] soft prompt: a smaller, still clear drop.
  assert losses[-1] < (0.9 if kind == "neural" else 0.95) * losses[0], losses[::10]
  before = tree_lib.flatten(s.trainable)
  changed = {k for k, v in tree_lib.flatten(trained).items()
             if not np.array_equal(np.asarray(v), np.asarray(before[k]))}
  if kind == "textual":  # text cuts the graph: prompt 1 gets no gradient in pass 2
    assert changed == {"encoder_prompt/second"}
  else:
    assert changed == set(before)


def _flags(steps):
  return ["--gin.MIXTURE_OR_TASK_NAME='synthetic_bare_multitask'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}", "--gin.BATCH_SIZE=4",
          f"--gin.TRAIN_STEPS={steps}", "--gin.CHECKPOINT_PERIOD=1",
          "--gin.ReportSpec.frozen_digest=True", "--gin.train.optimizer=@optax.adam()",
          "--gin.optax.adam.learning_rate=0.05"]


def _eval_and_infer(tmp_path, lines, *flags):
  for command, run_file in (("eval", "runs/prompt_eval.gin"), ("infer", "runs/prompt_infer.gin")):
    assert run_binary(command, tmp_path, lines, run_file,
                      "--gin.MIXTURE_OR_TASK_NAME='synthetic_reverse_bare'",
                      "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}",
                      "--gin.BATCH_SIZE=4", "--gin.InferenceSpec.max_examples=4",
                      "--gin.DecodingConfig.max_decode_length=4", *flags) == 0
  metrics = [json.loads(x) for x in open(tmp_path / "run" / "eval" / "metrics.jsonl")]
  assert "exact_match" in metrics[-1]


def test_neural_recursion_through_train_eval_and_infer(tmp_path):
  lines = ["include 'prompts/recursion_neural.gin'", "PROMPT_LENGTH = 2",
           "RecursionPrompts.connector_width = 8", "RecursionPrompts.mlp_dim = 8",
           "RecursionPrompts.num_heads = 2"]
  assert run_binary("train", tmp_path, lines, "runs/prompt_finetune.gin", *_flags(2)) == 0
  run = tmp_path / "run"
  assert summary(run)["frozen_sha256"] == t5x_fixture_digest()
  first, last = exported(run, 1), exported(run, 2)
  assert "encoder_prompt.first.npy" in last and any(".connector." in f for f in last)
  assert all(not np.array_equal(first[f], last[f]) for f in last)
  _eval_and_infer(tmp_path, lines)


def test_textual_recursion_two_stages_through_train_eval_and_infer(tmp_path):
  lines = ["include 'prompts/recursion_textual.gin'", "PROMPT_LENGTH = 2", "ANSWER_LENGTH = 3"]
  stage1 = tmp_path / "stage1"
  stage1.mkdir()
  assert run_binary("train", stage1, lines, "runs/prompt_finetune.gin", *_flags(2)) == 0
  prompt1 = exported(stage1 / "run", 2)
  assert list(prompt1) == ["encoder_prompt.first.npy"]
  path = stage1 / "run" / "prompts" / "step_2" / "encoder_prompt.first.npy"
  stage2 = ["--gin.TextualRecursionT5.train_pass=2",
            "--gin.ModelSpec.trainable_rules=%SECOND_PASS_RULES",
            "--gin.RecursionPrompts.first_init=@prompt_init.from_file()",
            f"--gin.prompt_init.from_file.path='{path}'"]
  assert run_binary("train", tmp_path, lines, "runs/prompt_finetune.gin", *_flags(2),
                    *stage2) == 0
  run = tmp_path / "run"
  first, last = exported(run, 1), exported(run, 2)
  assert list(last) == ["encoder_prompt.second.npy"]
  assert not np.array_equal(first["encoder_prompt.second.npy"], last["encoder_prompt.second.npy"])
  # The frozen tree is the backbone plus prompt 1, both exactly as read.
  frozen = {**fixture_arrays(), "encoder_prompt/first": prompt1["encoder_prompt.first.npy"]}
  assert summary(run)["frozen_sha256"] == tree_lib.tree_digest(tree_lib.unflatten(frozen))
  _eval_and_infer(tmp_path, lines, *stage2)
