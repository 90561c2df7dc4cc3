"""Beyond one static prompt: multi-task prompts, prompt banks and ensembles,
HyperPrompt, input-dependent prompts and ATTEMPT."""

import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding, evaluation
from prompt_tuning.cli import main as main_lib
from prompt_tuning.models import layers
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import hyper, input_dependent, multi_task
from prompt_tuning import trees as tree_lib
from prompt_tuning.runtime import freezing
from prompt_tuning.runtime.specs import InferenceSpec
from prompt_tuning.train import step as step_lib
from tests.conftest import files_digest, fixture_path
from tests.test_attempt import write_sources
from tests.test_binaries import FIXTURE_MODEL_GIN, t5x_fixture_digest

CFG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
               num_decoder_layers=1, head_dim=8, mlp_dim=32)
H = CFG.emb_dim


def _tokens(rows):
  width = max(len(r) for r in rows)
  return jnp.asarray([list(r) + [0] * (width - len(r)) for r in rows], jnp.int32)


def _seam(module, tokens, **features):
  """Runs a prompt module on random embeddings; returns (params, output)."""
  emb = jax.random.normal(jax.random.PRNGKey(3), tokens.shape + (H,))
  mask = tokens > 0
  # `nn.Module.init`: the prompt modules' `init` attribute is their initializer.
  variables = nn.Module.init(module, jax.random.PRNGKey(0), emb, tokens, mask, **features)
  variables = nn.meta.unbox(variables)
  return variables["params"], emb, mask, module.apply(variables, emb, tokens, mask, **features)


TOKENS = _tokens([[5, 6, 7, 1], [8, 9, 1]])
IDX = {"task_index": jnp.asarray([2, 0], jnp.int32)}


@pytest.mark.parametrize("mode", multi_task.MULTI_TASK_MODES)
def test_multi_task_prompt_shapes_masks_and_combination(mode):
  module = multi_task.MultiTaskPrompt(length=3, num_tasks=4, mode=mode, task_length=2)
  params, emb, mask, (x, out_mask) = _seam(module, TOKENS, **IDX)
  p = module.num_positions
  assert x.shape == (2, p + TOKENS.shape[1], H) and out_mask.shape == (2, p + TOKENS.shape[1])
  np.testing.assert_array_equal(out_mask[:, :p], True)  # prompt positions always visible
  np.testing.assert_array_equal(out_mask[:, p:], mask)
  np.testing.assert_array_equal(x[:, p:], emb)
  shared = params["shared"]
  for row, task in enumerate([2, 0]):
    if mode == "add":
      np.testing.assert_allclose(x[row, :3], shared + params["tasks"][task], rtol=1e-6)
    elif mode == "concat_length":
      np.testing.assert_array_equal(x[row, :3], shared)
      np.testing.assert_array_equal(x[row, 3:5], params["tasks"][task])
    elif mode == "concat_features":
      np.testing.assert_array_equal(x[row, :3, :H - H // 2], shared)
      np.testing.assert_array_equal(x[row, :3, H - H // 2:], params["tasks"][task])
    else:  # project: shared (I + A(v) B(v)) with A, B generated from the task vector
      v = params["task_vectors"][task]
      a = np.einsum("k,khr->hr", v, params["generator_a"])
      b = np.einsum("k,krh->rh", v, params["generator_b"])
      np.testing.assert_allclose(x[row, :3], shared + shared @ a @ b, rtol=1e-5, atol=1e-6)
  if mode == "project":
    assert not np.allclose(x[0, :3], x[1, :3])  # the two tasks differ


def test_missing_or_out_of_range_index():
  module = multi_task.PromptBank(num_prompts=3, length=2)
  params, emb, mask, _ = _seam(module, TOKENS, **IDX)
  with pytest.raises(ValueError, match="needs the per-example feature 'task_index'"):
    module.apply({"params": params}, emb, TOKENS, mask)
  x, _ = module.apply({"params": params}, emb, TOKENS, mask,
                      task_index=jnp.asarray([1, 7], jnp.int32))
  assert np.isfinite(x[0]).all() and np.isnan(x[1, :2]).all()  # never another task's prompt
  with pytest.raises(ValueError, match="Unknown multi-task mode"):
    _seam(multi_task.MultiTaskPrompt(length=2, num_tasks=2, mode="mean"), TOKENS, **IDX)


def test_prompt_bank_rows_per_example():
  module = multi_task.PromptBank(num_prompts=3, length=2)
  params, emb, _, (x, mask) = _seam(module, TOKENS, **IDX)
  assert params["prompts"].shape == (3, 2, H)
  np.testing.assert_array_equal(x[0, :2], params["prompts"][2])
  np.testing.assert_array_equal(x[1, :2], params["prompts"][0])
  assert not np.allclose(params["prompts"][0], params["prompts"][1])  # rows start different


def _model_and_params(prompt):
  model = T5(CFG, encoder_prompt=prompt)
  params = params_lib.init_params(model, jax.random.PRNGKey(0))
  return model, params


@pytest.mark.parametrize("prompt", [
    multi_task.MultiTaskPrompt(length=3, num_tasks=3, mode="project"),
    multi_task.PromptBank(num_prompts=3, length=3),
    hyper.HyperPrompt(model_config=CFG, num_tasks=3, length=2),
], ids=["multi_task", "bank", "hyperprompt"])
def test_mixed_batch_equals_single_task_batches(prompt):
  model, params = _model_and_params(prompt)
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(9), x.shape),
                        params)  # hypernetwork outputs far from zero
  enc = _tokens([[5, 6, 7, 1], [8, 9, 1], [10, 11, 12, 13, 1]])
  dec_in = _tokens([[0, 3, 4], [0, 5], [0, 6, 7]])
  dec_tgt = _tokens([[3, 4, 1], [5, 1], [6, 7, 1]])
  tasks = jnp.asarray([2, 0, 1], jnp.int32)
  mixed = model.apply({"params": params}, enc, dec_in, dec_tgt,
                      prompt_features={"task_index": tasks})
  for i in range(3):
    single = model.apply({"params": params}, enc[i:i + 1], dec_in[i:i + 1], dec_tgt[i:i + 1],
                         prompt_features={"task_index": tasks[i:i + 1]})
    np.testing.assert_allclose(mixed[i:i + 1], single, rtol=2e-5, atol=2e-5)
  other = model.apply({"params": params}, enc, dec_in, dec_tgt,
                      prompt_features={"task_index": jnp.asarray([1, 2, 0], jnp.int32)})
  assert not np.allclose(mixed, other, atol=1e-4)  # the index matters


def test_attention_prefix_is_prepended_keys_and_values():
  attn = layers.MultiHeadAttention(num_heads=2, head_dim=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5))
  variables = nn.meta.unbox(attn.init(jax.random.PRNGKey(1), x, x, None))
  pk = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 2, 3))
  pv = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 2, 3))
  bias = jax.random.normal(jax.random.PRNGKey(4), (2, 2, 4, 4))
  got = attn.apply(variables, x, x, bias, prefix_kv=(pk, pv))
  w = {k: v["kernel"] for k, v in variables["params"].items()}
  q = (x @ w["query"]).reshape(2, 4, 2, 3)
  k = jnp.concatenate([pk, (x @ w["key"]).reshape(2, 4, 2, 3)], axis=1)
  v = jnp.concatenate([pv, (x @ w["value"]).reshape(2, 4, 2, 3)], axis=1)
  logits = jnp.einsum("blnd,bknd->bnlk", q, k)
  logits = logits + jnp.concatenate([jnp.zeros((2, 2, 4, 3)), bias], axis=-1)
  ref = jnp.einsum("bnlk,bknd->blnd", jax.nn.softmax(logits, -1), v).reshape(2, 4, 6)
  np.testing.assert_allclose(got, ref @ w["out"], rtol=1e-5, atol=1e-5)


def test_input_dependent_prompt_depends_on_the_input_and_ignores_padding():
  module = input_dependent.InputDependentPrompt(length=3, width=8, num_layers=2, num_heads=2,
                                                mlp_dim=16)
  params, emb, mask, (x, out_mask) = _seam(module, TOKENS)
  assert x.shape == (2, 3 + TOKENS.shape[1], H)
  np.testing.assert_array_equal(out_mask[:, :3], True)
  assert not np.allclose(x[0, :3], x[1, :3])  # a prompt per input
  # More padding (garbage embeddings at padded positions) changes nothing.
  padded = jnp.pad(TOKENS, ((0, 0), (0, 3)))
  emb2 = jnp.concatenate([emb, 50.0 * jnp.ones((2, 3, H))], axis=1)
  x2, _ = module.apply({"params": params}, emb2, padded, padded > 0)
  np.testing.assert_allclose(x2[:, :3], x[:, :3], rtol=1e-5, atol=1e-5)


def test_ensembles_vote_or_average():
  # 3 prompts, 2 examples, 2 candidates.
  scores = jnp.asarray([[[-1.0, -2.0], [-5.0, -0.1]],
                        [[-1.0, -2.0], [-0.2, -9.0]],
                        [[-9.0, -2.0], [-0.3, -8.0]]])
  np.testing.assert_array_equal(evaluation.ensemble_rank(scores, "majority_vote"), [0, 0])
  np.testing.assert_array_equal(evaluation.ensemble_rank(scores, "mean_log_prob"), [1, 0])
  with pytest.raises(ValueError, match="Unknown ensemble method"):
    evaluation.ensemble_rank(scores, "median")


def test_ensemble_predict_runs_every_prompt():
  bank = multi_task.PromptBank(num_prompts=3, length=2)
  model, params = _model_and_params(bank)

  class Vocab:
    def encode(self, s):
      return [10 + len(s)]

    def decode(self, ids):
      return " ".join(map(str, ids))

  examples = [{"inputs": np.asarray([5, 6, 1])}, {"inputs": np.asarray([7, 1])}]
  labels = ["a", "bb"]
  got = evaluation.predict(model, params, examples, Vocab(), 6, 2, InferenceSpec(
      class_labels=labels, ensemble_prompts=3, ensemble_method="mean_log_prob"))
  # Reference: each prompt's own scores, averaged.
  enc = _tokens([[5, 6, 1, 0, 0, 0], [7, 1, 0, 0, 0, 0]])
  per_prompt = []
  for k in range(3):
    feats = {"task_index": jnp.full((2,), k, jnp.int32)}
    per_prompt.append(np.stack([np.asarray(decoding.score(
        model, params, enc, jnp.asarray([[10 + len(lab), 1]] * 2), prompt_features=feats))
        for lab in labels], axis=-1))
  mean = np.mean(per_prompt, axis=0)
  assert [p for p, _ in got] == [labels[i] for i in mean.argmax(-1)]
  np.testing.assert_allclose([s for _, s in got], mean.max(-1), rtol=1e-5)
  decoded = evaluation.predict(model, params, examples, Vocab(), 6, 2, InferenceSpec(
      decoding=decoding.DecodingConfig(max_decode_length=3), ensemble_prompts=3))
  assert len(decoded) == 2


def test_predict_reuses_compiled_functions_for_equal_models_and_reads_params_each_call():
  from prompt_tuning.prompts import soft

  class Vocab:
    def encode(self, s):
      return [10 + len(s)]

    def decode(self, ids):
      return " ".join(map(str, ids))

  # Two equal modules (separate objects) share predict's jitted functions; another
  # prompt length does not.
  model, params = _model_and_params(soft.SoftPrompt(2))
  twin = T5(CFG, encoder_prompt=soft.SoftPrompt(2))
  config = decoding.DecodingConfig(max_decode_length=3)
  assert twin is not model
  assert evaluation.compiled_functions(twin, config) is evaluation.compiled_functions(
      model, config)
  assert evaluation.compiled_functions(T5(CFG, encoder_prompt=soft.SoftPrompt(3)),
                                       config) is not evaluation.compiled_functions(model, config)
  # Another initializer changes nothing that applying the parameters computes.
  zeros_init = T5(CFG, encoder_prompt=soft.SoftPrompt(2, init=jax.nn.initializers.zeros))
  assert zeros_init != model
  assert evaluation.compiled_functions(zeros_init, config) is evaluation.compiled_functions(
      model, config)
  # The shared programs take the prompt as an argument: a second prompt value gives
  # that prompt's own scores (the reference is decoding.score run directly).
  examples = [{"inputs": np.asarray([5, 6, 1])}, {"inputs": np.asarray([7, 1])}]
  enc = _tokens([[5, 6, 1, 0, 0, 0], [7, 1, 0, 0, 0, 0]])
  labels = ["a", "bb"]
  for scale in (0.0, 3.0):
    p = jax.tree.map(lambda x: x, params)
    p["encoder_prompt"]["prompt"] = scale * jax.random.normal(jax.random.PRNGKey(1), (2, H))
    got = evaluation.predict(twin, p, examples, Vocab(), 6, 2,
                             InferenceSpec(decoding=config, class_labels=labels))
    want = np.stack([np.asarray(decoding.score(model, p, enc,
                                               jnp.asarray([[10 + len(lab), 1]] * 2)))
                     for lab in labels], axis=-1)
    np.testing.assert_allclose([s for _, s in got], want.max(-1), rtol=1e-5)


# --- Only the method's own parameters train; the backbone stays bit-identical --------

METHOD_GINS = {
    "multi_task": ["include 'prompts/multi_task.gin'", "NUM_TASKS = 7", "PROMPT_LENGTH = 3",
                   "MULTI_TASK_MODE = 'project'"],
    "prompt_bank": ["include 'prompts/prompt_bank.gin'", "NUM_PROMPTS = 7",
                    "PROMPT_LENGTH = 3"],
    "hyperprompt": ["include 'prompts/hyperprompt.gin'", "NUM_TASKS = 7", "PROMPT_LENGTH = 2"],
    "input_dependent": ["include 'prompts/input_dependent.gin'", "PROMPT_LENGTH = 3",
                        "InputDependentPrompt.width = 8", "InputDependentPrompt.mlp_dim = 8"],
    "attempt": ["include 'prompts/attempt.gin'", "SOURCE_PROMPT_FILES = %(sources)s"],
    "deep_prompt": ["include 'prompts/deep_prompt.gin'", "PROMPT_LENGTH = 2"],
    "prefix_tuning": ["include 'prompts/prefix_tuning.gin'", "PROMPT_LENGTH = 2",
                      "DeepPrompt.reparam_hidden = 8"],
    "ia3": ["include 'prompts/ia3.gin'"],
    "prompt_ia3": ["include 'prompts/prompt_ia3.gin'", "PROMPT_LENGTH = 2"],
    "prompt_mask": ["include 'prompts/prompt_mask.gin'", "PROMPT_LENGTH = 2",
                    "PROMPT_SEES_INPUTS = False"],
    "attempt_multi_task": ["include 'prompts/attempt.gin'", "SOURCE_PROMPT_FILES = %(sources)s",
                           "ATTEMPT_NUM_TASKS = 7"],
}
_IA3_VECTORS = ["decoder_cross_attention_key", "decoder_cross_attention_value", "decoder_mlp",
                "decoder_self_attention_key", "decoder_self_attention_value", "encoder_mlp",
                "encoder_self_attention_key", "encoder_self_attention_value"]
_DEEP_FILES = sorted(f"encoder_prompt.{kind}_{part}.npy"
                     for kind in ("encoder_self", "decoder_self", "cross")
                     for part in ("key", "value"))
# The exported files, where a method's are not simply its parameters.
METHOD_FILES = {
    "deep_prompt": _DEEP_FILES,
    "prefix_tuning": _DEEP_FILES,  # the MLP is folded into the plain prefixes
    "ia3": [f"encoder_prompt.{v}.npy" for v in _IA3_VECTORS],
    "prompt_ia3": [f"encoder_prompt.per_layer_0.{v}.npy" for v in _IA3_VECTORS]
                  + ["encoder_prompt.prompt.prompt.npy"],
    "prompt_mask": ["encoder_prompt.prompt.prompt.npy"],
}


@pytest.mark.parametrize("method", sorted(METHOD_GINS))
def test_only_the_methods_own_parameters_train(method, tmp_path):
  """Each method's gin config trains through the train binary on the frozen T5X
  fixture: every exported leaf is the method's and changed; the backbone's
  digest equals the checkpoint's."""
  sources = write_sources(tmp_path, 2, p=3, h=4)
  source_digests = [files_digest(f) for f in sources]
  body = "\n".join([FIXTURE_MODEL_GIN] + METHOD_GINS[method]) % {"sources": sources}
  (tmp_path / "model.gin").write_text(body)
  run = str(tmp_path / "run")
  gin.clear_config()
  try:
    code = main_lib.main([
        "train", f"--gin_file={tmp_path / 'model.gin'}", "--gin_file=runs/prompt_finetune.gin",
        f"--gin.MODEL_DIR='{run}'", "--gin.MIXTURE_OR_TASK_NAME='synthetic_bare_multitask'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}", "--gin.BATCH_SIZE=8",
        "--gin.TRAIN_STEPS=3", "--gin.CHECKPOINT_PERIOD=1", "--gin.ReportSpec.frozen_digest=True",
        "--gin.train.optimizer=@optax.adam()", "--gin.optax.adam.learning_rate=0.05"])
  finally:
    gin.clear_config()
  assert code == 0
  summary = json.load(open(os.path.join(run, "train_summary.json")))
  assert summary["frozen_sha256"] == t5x_fixture_digest()
  # The prompts (each also has a provenance sidecar beside it).
  first = sorted(f for f in os.listdir(os.path.join(run, "prompts", "step_1"))
                 if f.endswith(".npy"))
  last = sorted(f for f in os.listdir(os.path.join(run, "prompts", "step_3"))
                if f.endswith(".npy"))
  assert first == last and all(f.startswith("encoder_prompt.") for f in last)
  if method in METHOD_FILES:
    assert last == METHOD_FILES[method]
  changed = [f for f in last if not np.array_equal(
      np.load(os.path.join(run, "prompts", "step_1", f)),
      np.load(os.path.join(run, "prompts", "step_3", f)))]
  assert changed == last, f"did not train: {sorted(set(last) - set(changed))}"
  # ATTEMPT's sources are read, never written.
  assert [files_digest(f) for f in sources] == source_digests


def test_trainable_rules_switch_trains_the_backbone_too():
  prompt = hyper.HyperPrompt(model_config=CFG, num_tasks=2, length=2)
  model, params = _model_and_params(prompt)
  frozen_mask = freezing.trainable_mask(params, freezing.PROMPT_TUNING_RULES)
  assert {k for k, v in frozen_mask.items() if v} == {
      k for k in tree_lib.flatten(params) if k.startswith("encoder_prompt/")}
  full = freezing.trainable_mask(params, freezing.FULL_FINETUNING_RULES)
  assert all(full.values())
  trainable, frozen = freezing.split(params, full)
  import optax
  opt = optax.sgd(0.1)
  step = jax.jit(step_lib.make_train_step(model, opt))
  batch = {"encoder_input_tokens": _tokens([[5, 6, 1], [7, 1]]),
           "decoder_input_tokens": _tokens([[0, 3], [0, 4]]),
           "decoder_target_tokens": _tokens([[3, 1], [4, 1]]),
           "task_index": jnp.asarray([0, 1], jnp.int32)}
  new, _, metrics = step(trainable, opt.init(trainable), frozen, batch, jax.random.PRNGKey(0))
  assert float(metrics["finite"]) == 1.0
  key = "encoder/layers_0/attention/query/kernel"
  assert not np.array_equal(tree_lib.flatten(new)[key], tree_lib.flatten(trainable)[key])


def test_prompt_ensemble_gin_trains_every_prompt_on_the_task_and_votes(tmp_path):
  """prompts/prompt_ensemble.gin: every example trains every prompt (Lester et al.'s
  ensembles), the members start apart, and eval runs them all with a majority vote."""
  (tmp_path / "model.gin").write_text(FIXTURE_MODEL_GIN)
  (tmp_path / "ensemble.gin").write_text(
      "include 'prompts/prompt_ensemble.gin'\nNUM_PROMPTS = 3\nPROMPT_LENGTH = 2\n"
      "ENSEMBLE_BASE_TASK = 'synthetic_copy'\n")
  run = str(tmp_path / "run")
  common = [f"--gin_file={tmp_path / 'model.gin'}", f"--gin.MODEL_DIR='{run}'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{fixture_path('t5x_tiny_checkpoint')}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}", "--gin.BATCH_SIZE=8"]
  gin.clear_config()
  try:
    assert main_lib.main(["train", *common[:1], "--gin_file=runs/prompt_finetune.gin",
                          f"--gin_file={tmp_path / 'ensemble.gin'}", *common[1:],
                          "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2"]) == 0
    gin.clear_config()
    assert main_lib.main(["eval", *common[:1], "--gin_file=runs/prompt_eval.gin",
                          f"--gin_file={tmp_path / 'ensemble.gin'}", *common[1:],
                          "--gin.MIXTURE_OR_TASK_NAME='synthetic_copy'",
                          "--gin.MAX_EVAL_EXAMPLES=8",
                          "--gin.DecodingConfig.max_decode_length=4"]) == 0
    assert str(gin.query_parameter("InferenceSpec.ensemble_prompts")) == "%NUM_PROMPTS"
    assert gin.query_parameter("%NUM_PROMPTS") == 3
    assert gin.query_parameter("%ENSEMBLE_METHOD") == "majority_vote"
    assert gin.query_parameter("%ENSEMBLE_SAMPLING") == "full"
  finally:
    gin.clear_config()
  import seqio
  assert "synthetic_copy_ensemble3" in seqio.TaskRegistry.names()
  bank = np.load(os.path.join(run, "prompts", "step_2", "encoder_prompt.prompts.npy"))
  assert bank.shape == (3, 2, 4)
  assert len({row.tobytes() for row in bank}) == 3  # three different members
  records = [json.loads(line) for line in open(os.path.join(run, "eval", "metrics.jsonl"))]
  assert records[-1]["num_examples"] == 8 and "exact_match" in records[-1]
