"""ID-PT as in Levine et al. (2022): queries over a frozen encoder's reading of the input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import readers
from prompt_tuning import trees as tree_lib
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import input_dependent as idp
from prompt_tuning.runtime import setup as setup_lib
from prompt_tuning.runtime.specs import ModelSpec
from prompt_tuning.runtime import freezing
from tests.conftest import fixture_path
from tests.toy_runs import (CFG, digest, exported, run_binary, summary, toy_batch,
                               train_in_process)
from tests.test_binaries import t5x_fixture_digest

FIXTURE_CFG = T5Config(vocab_size=32128, emb_dim=4, num_heads=2, num_encoder_layers=2,
                       num_decoder_layers=2, head_dim=2, mlp_dim=8,
                       relative_attention_num_buckets=4, relative_attention_max_distance=8)


def _spec(**prompt_kwargs):
  prompt = idp.FrozenReadingPrompt(length=3, width=8, mlp_dim=8, num_heads=2, **prompt_kwargs)
  return ModelSpec(CFG, encoder_prompt=prompt, model_class=idp.InputDependentT5)


def test_the_prompt_is_written_from_the_backbone_encoders_reading():
  """The generator sees the plain encoder's output: replacing the backbone's
  encoder weights changes the prompt, and the reading is the no-prompt encoding."""
  s = setup_lib.build(_spec())
  params = freezing.merge(s.trainable, s.frozen)
  tokens = jnp.asarray([[5, 6, 7, 1], [8, 9, 1, 0]], jnp.int32)
  enc, mask = s.model.apply({"params": params}, tokens, method=s.model.encode)
  assert enc.shape == (2, 3 + 4, CFG.emb_dim)
  np.testing.assert_array_equal(np.asarray(mask[:, :3]), True)
  np.testing.assert_array_equal(np.asarray(mask[:, 3:]), np.asarray(tokens > 0))
  # What the reading pass gives is exactly plain T5's encoding without a prompt.
  plain = T5(CFG)
  plain_params = {k: v for k, v in params.items() if k != "encoder_prompt"}
  ref, _ = plain.apply({"params": plain_params}, tokens, method=plain.encode)
  got, _ = s.model.apply({"params": params}, tokens, method=lambda m, t: m.encoder(
      t, prompt_features={idp.READ_PASS: True}))
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)
  # A different frozen encoder reads differently, so the prompt changes.
  flat = tree_lib.flatten(params)
  key = "encoder/layers_0/mlp/wo/kernel"
  flat[key] = flat[key] * 3.0
  enc2, _ = s.model.apply({"params": tree_lib.unflatten(flat)}, tokens,
                          method=s.model.encode)
  assert not np.allclose(np.asarray(enc2[:, :3]), np.asarray(enc[:, :3]))


def _prompts(setup, params, tokens):
  """The generated prompt rows [B, P, H] of `tokens` (the prompt module's own output,
  given the backbone's reading where it takes one)."""
  def prompt_rows(model, tokens_BL):
    features = {}
    if model.encoder_prompt.needs_backbone_reading:
      features[idp.READING] = model.encoder(tokens_BL, deterministic=True,
                                            prompt_features={idp.READ_PASS: True})
    embedded = jnp.zeros(tokens_BL.shape + (CFG.emb_dim,))
    joined, _ = model.encoder_prompt(embedded, tokens_BL, tokens_BL > 0, **features)
    return joined[:, :3]
  return np.asarray(setup.model.apply({"params": params}, tokens, method=prompt_rows))


def test_a_zeroed_reading_keeps_the_parameters_and_removes_the_input_dependence():
  """Issue 35's control: the same generator (same parameter tree) fed zeros writes
  one prompt for every input, while the reading generator's prompts differ."""
  tokens = jnp.asarray([[5, 6, 7, 1], [8, 9, 1, 0], [20, 21, 22, 1]], jnp.int32)
  reading, zeroed = setup_lib.build(_spec()), setup_lib.build(_spec(zero_reading=True))
  assert (jax.tree.map(jnp.shape, reading.trainable) ==
          jax.tree.map(jnp.shape, zeroed.trainable))
  # The same trained generator in both: only the reading differs.
  generator = jax.tree.map(lambda x: x + 0.1, reading.trainable)
  with_reading = _prompts(reading, freezing.merge(generator, reading.frozen), tokens)
  without = _prompts(zeroed, freezing.merge(generator, zeroed.frozen), tokens)
  assert not np.allclose(with_reading[0], with_reading[1])
  assert not np.allclose(with_reading[0], with_reading[2])
  np.testing.assert_array_equal(without[0], without[1])  # padding changes nothing either
  np.testing.assert_array_equal(without[0], without[2])
  assert np.all(np.isfinite(without)) and np.abs(without).max() > 0
  # No reading pass is made for it (the wrapper skips it): no backbone reading reaches it.
  assert not zeroed.model.encoder_prompt.needs_backbone_reading
  assert reading.model.encoder_prompt.needs_backbone_reading


def test_without_the_wrapper_the_backbone_reading_is_one_clear_error():
  spec = _spec().replace(model_class=None)
  with pytest.raises(ValueError, match="model_class = @InputDependentT5"):
    setup_lib.abstract(spec)


def test_only_the_generator_trains_and_it_learns_a_tiny_case():
  spec = _spec()
  s, trained, losses = train_in_process(spec, toy_batch(), steps=30, lr=0.1)
  assert losses[-1] < 0.9 * losses[0], losses[::10]
  assert set(tree_lib.flatten(trained)) == {
      k for k in tree_lib.flatten(s.trainable)} and all(
      k.startswith("encoder_prompt/generator/") for k in tree_lib.flatten(trained))
  assert "encoder_prompt/generator/queries" in tree_lib.flatten(trained)


def test_train_binary_on_a_mixture_without_task_index_keeps_the_backbone(tmp_path):
  """configs/prompts/input_dependent_frozen.gin through `prompt-tuning train` on a
  7-task mixture (its task_index is never read): every exported generator leaf
  changed, and the frozen tree's digest equals the T5X checkpoint's."""
  code = run_binary(
      "train", tmp_path,
      ["include 'prompts/input_dependent_frozen.gin'", "PROMPT_LENGTH = 3",
       "FrozenReadingPrompt.width = 8", "FrozenReadingPrompt.mlp_dim = 8"],
      "runs/prompt_finetune.gin", "--gin.MIXTURE_OR_TASK_NAME='synthetic_bare_multitask'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}", "--gin.BATCH_SIZE=8",
      "--gin.TRAIN_STEPS=3", "--gin.CHECKPOINT_PERIOD=1", "--gin.ReportSpec.frozen_digest=True",
      "--gin.train.optimizer=@optax.adam()", "--gin.optax.adam.learning_rate=0.05")
  assert code == 0
  run = tmp_path / "run"
  assert summary(run)["frozen_sha256"] == t5x_fixture_digest()
  first, last = exported(run, 1), exported(run, 3)
  assert sorted(first) == sorted(last) and all(f.startswith("encoder_prompt.generator")
                                               for f in last)
  assert [f for f in last if not np.array_equal(first[f], last[f])] == sorted(last)


def test_a_separate_frozen_reader_is_read_from_its_checkpoint_and_stays_frozen():
  """The reader (here the T5X fixture, width 4) under a width-16 backbone with a
  projection: its arrays equal the checkpoint's, are frozen, and stay bit-identical."""
  path = fixture_path("t5x_tiny_checkpoint")
  spec = ModelSpec(CFG.replace(vocab_size=32128), encoder_prompt=idp.FrozenReadingPrompt(
      length=2, width=8, mlp_dim=8, num_heads=2, reader_checkpoint=path,
      reader_config=FIXTURE_CFG))
  batch = toy_batch()
  s, trained, losses = train_in_process(spec, batch, steps=5)
  assert losses[-1] < losses[0]
  frozen = tree_lib.flatten(s.frozen)
  reference = tree_lib.flatten(readers.load_params(path, T5(FIXTURE_CFG)))
  reader = {k[len("encoder_prompt/reader/"):]: v for k, v in frozen.items()
            if k.startswith("encoder_prompt/reader/")}
  assert reader and set(reader) == {k for k in reference
                                    if k.startswith(("encoder/", "token_embedder/"))}
  for k, v in reader.items():
    np.testing.assert_array_equal(np.asarray(v), reference[k])
  assert all(k.startswith("encoder_prompt/generator/") for k in tree_lib.flatten(trained))
  assert digest(s.frozen) == digest(jax.tree.map(np.asarray, s.frozen))


def test_a_reader_of_another_width_without_projection_is_one_clear_error():
  spec = ModelSpec(CFG.replace(vocab_size=32128), encoder_prompt=idp.FrozenReadingPrompt(
      length=2, reader_checkpoint=fixture_path("t5x_tiny_checkpoint"),
      reader_config=FIXTURE_CFG, project_reader=False))
  with pytest.raises(ValueError, match=r"reader's width 4 differs from the backbone's 16 "
                     r"and project_reader=False"):
    setup_lib.abstract(spec)


def test_the_from_scratch_generator_stays_an_option():
  prompt = idp.InputDependentPrompt(length=3, width=8, mlp_dim=8, num_heads=2)
  model = T5(CFG, encoder_prompt=prompt)
  params = params_lib.init_params(model, jax.random.PRNGKey(0))
  assert "input_projection" in params["encoder_prompt"]
