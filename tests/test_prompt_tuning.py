"""Soft prompts, initializers, freezing, the masked optimizer, and learning."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.models.t5 import shift_right
from prompt_tuning.models import params as params_lib
from prompt_tuning.models import presets
from prompt_tuning.models.t5 import T5, T5Config
from prompt_tuning.prompts import base, initializers, soft
from prompt_tuning import trees as tree_lib
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.runtime import freezing
from prompt_tuning.train import optimizers
from prompt_tuning.train import step as step_lib
from tests.conftest import TINY_CONFIG, fixture_path

# --- the soft prompt module -------------------------------------------------

EMB = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)  # [B, L, H]
MASK = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)         # lengths 4 and 2
PROMPT = -1.0 - jnp.arange(2 * 3, dtype=jnp.float32).reshape(2, 3)  # [P, H]


def _rows(x):
  """Each position as a tuple, for readable comparisons."""
  return [[tuple(float(v) for v in pos) for pos in row] for row in np.asarray(x)]


@pytest.mark.parametrize("combine,order", [
    ("prefix", [["p0", "p1", 0, 1, 2, 3, 4], ["p0", "p1", 0, 1, 2, 3, 4]]),
    ("after_first", [[0, "p0", "p1", 1, 2, 3, 4], [0, "p0", "p1", 1, 2, 3, 4]]),
    ("suffix", [[0, 1, 2, "p0", "p1", 3, 4], [0, "p0", "p1", 1, 2, 3, 4]]),
])
def test_join_prompt_positions_and_masks(combine, order):
  x, mask = soft.join_prompt(jnp.broadcast_to(PROMPT[None], (2, 2, 3)), EMB, MASK, combine)
  assert x.shape == (2, 7, 3) and mask.shape == (2, 7)
  for b in range(2):
    want = [tuple(np.asarray(PROMPT[int(o[1])])) if isinstance(o, str)
            else tuple(np.asarray(EMB[b, o])) for o in order[b]]
    assert _rows(x)[b] == [tuple(float(v) for v in w) for w in want]
    want_mask = [True if isinstance(o, str) else bool(MASK[b, o]) for o in order[b]]
    assert np.asarray(mask[b]).tolist() == want_mask


def test_soft_prompt_parameter_axes_and_shape():
  model = T5(TINY_CONFIG, encoder_prompt=soft.SoftPrompt(length=3))
  shapes, specs = params_lib.abstract_params(model)
  assert shapes["encoder_prompt"]["prompt"].shape == (3, TINY_CONFIG.emb_dim)
  assert tuple(specs["encoder_prompt"]["prompt"]) == ("prompt", "prompt_embed")
  # Prompt parameters stay float32 even when the backbone is stored in bfloat16.
  shapes16, _ = params_lib.abstract_params(T5(TINY_CONFIG.replace(weight_dtype="bfloat16"),
                                              encoder_prompt=soft.SoftPrompt(length=3)))
  assert shapes16["encoder_prompt"]["prompt"].dtype == jnp.float32
  assert shapes16["token_embedder"]["embedding"].dtype == jnp.bfloat16


def test_unknown_combine_mode_is_an_error():
  model = T5(TINY_CONFIG, encoder_prompt=soft.SoftPrompt(length=2, combine="middle"))
  with pytest.raises(ValueError, match="combine mode 'middle'"):
    params_lib.init_params(model, jax.random.PRNGKey(0))


# --- initializers -------------------------------------------------------------

def _spm():
  import seqio
  return seqio.SentencePieceVocabulary(fixture_path("t5_spm.model"))


def test_random_uniform_range():
  value = initializers.random_uniform(0.25)(jax.random.PRNGKey(0), (50, 8))
  assert float(value.min()) >= -0.25 and float(value.max()) <= 0.25
  assert float(value.std()) > 0.1


def test_sampled_vocab_takes_rows_of_the_first_n():
  table = np.load(fixture_path("tiny_embeddings_32128x4.npy"))
  key = jax.random.PRNGKey(0)
  value = np.asarray(initializers.sampled_vocab(
      embeddings=fixture_path("tiny_embeddings_32128x4.npy"), first_n=50)(key, (20, 4)))
  matches = [np.flatnonzero((table == row).all(axis=1)) for row in value]
  assert all(len(m) >= 1 and m.min() < 50 for m in matches)
  # Without replacement while the population allows it (the seed library's rule).
  assert len({m.min() for m in matches}) == 20
  # The same from the checkpoint itself, and from the table the setup hands over
  # (the default source: the backbone's).
  from_ckpt = initializers.sampled_vocab(embeddings=fixture_path("t5x_tiny_checkpoint"),
                                         first_n=50)(key, (20, 4))
  np.testing.assert_array_equal(value, from_ckpt)
  handed = initializers.sampled_vocab(first_n=50)(key, (20, 4),
                                                  context=base.InitContext(embeddings=table))
  np.testing.assert_array_equal(value, handed)
  # Checked when the initializer runs (it reads the table only then).
  with pytest.raises(ValueError, match="first_n=40000"):
    initializers.sampled_vocab(embeddings=table, first_n=40000)(key, (5, 4))
  with pytest.raises(ValueError, match="first_n=0 must be at least 1"):
    initializers.sampled_vocab(embeddings=table, first_n=0)


def _token_ids(table, prompt):
  """The table row each prompt row is (the lowest index among equal rows)."""
  return [int(np.flatnonzero((table == row).all(axis=1)).min()) for row in np.asarray(prompt)]


def test_sampled_vocab_rows_follow_the_run_seed_and_differ_across_a_bank():
  """Issue 15 point 5: the rows come from the initializer's key (the run's seed), inside a
  jitted init as well as eagerly; a prompt bank's members draw different rows; an explicit
  seed pins them."""
  table = np.random.RandomState(0).randn(300, 4).astype(np.float32)
  init = initializers.sampled_vocab(embeddings=table, first_n=200)
  ids = {seed: _token_ids(table, init(jax.random.PRNGKey(seed), (6, 4))) for seed in range(4)}
  assert all(max(v) < 200 for v in ids.values())
  assert len({tuple(v) for v in ids.values()}) == 4, ids  # four seeds, four draws
  # Same key, same rows; and the jitted init (the key a tracer, the rows gathered on
  # the host) draws exactly what the eager call does.
  assert _token_ids(table, init(jax.random.PRNGKey(2), (6, 4))) == ids[2]
  jitted = jax.jit(lambda k: init(k, (6, 4)))(jax.random.PRNGKey(2))
  assert _token_ids(table, jitted) == ids[2]
  # A bank of 3: each member its own key, so its own rows.
  bank = jax.jit(lambda k: base.stacked(init)(k, (3, 6, 4)))(jax.random.PRNGKey(0))
  members = [tuple(_token_ids(table, bank[i])) for i in range(3)]
  assert len(set(members)) == 3, members
  # An explicit seed ignores the key.
  pinned = initializers.sampled_vocab(embeddings=table, first_n=200, seed=7)
  np.testing.assert_array_equal(pinned(jax.random.PRNGKey(0), (6, 4)),
                                pinned(jax.random.PRNGKey(1), (6, 4)))
  # The class-label and string initializers' sampled tail follows the key too.
  class Vocab:
    def encode(self, text):
      return [3]
  labels = initializers.class_labels(["x"], embeddings=table, vocabulary=Vocab())
  tails = {tuple(_token_ids(table, labels(jax.random.PRNGKey(s), (6, 4))[1:])) for s in range(3)}
  assert len(tails) == 3


def test_class_labels_average_their_subtokens_then_fallback():
  table = np.load(fixture_path("tiny_embeddings_32128x4.npy"))
  vocab = _spm()
  labels = ["positive", "not_entailment"]
  init = initializers.class_labels(labels, embeddings=table, vocabulary=vocab,
                                   fallback=initializers.random_uniform(0.01))
  value = np.asarray(init(jax.random.PRNGKey(0), (5, 4)))
  for i, label in enumerate(labels):
    ids = vocab.encode(label)
    assert len(ids) >= 1
    np.testing.assert_allclose(value[i], table[ids].mean(axis=0), rtol=1e-6)
  assert len(vocab.encode("not_entailment")) > 1  # a real multi-token average
  assert np.abs(value[2:]).max() <= 0.01
  with pytest.raises(ValueError, match="do not fit a prompt of length 1"):
    initializers.class_labels(labels, embeddings=table, vocabulary=vocab)(
        jax.random.PRNGKey(0), (1, 4))


def test_from_string_uses_the_text_tokens():
  table = np.load(fixture_path("tiny_embeddings_32128x4.npy"))
  value = np.asarray(initializers.from_string("The movie was great!", embeddings=table,
                                              vocabulary=_spm())(jax.random.PRNGKey(0), (8, 4)))
  np.testing.assert_array_equal(value[:5], table[[37, 1974, 47, 248, 55]])


def test_from_file_casts_and_checks_shape(tmp_path):
  path = fixture_path("prompt_5x256.npy")
  value = initializers.from_file(path)(None, (5, 256), jnp.float32)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, np.load(path).astype(np.float32))
  with pytest.raises(ValueError, match=r"shape \(5, 256\).*shape \(5, 512\)"):
    initializers.from_file(path)(None, (5, 512))
  pickled = tmp_path / "pickled.npy"
  np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="pickled objects are refused"):
    initializers.from_file(str(pickled))(None, (1,))
  with pytest.raises(FileNotFoundError, match="not found"):
    initializers.from_file(str(tmp_path / "missing.npy"))


# --- freezing and the optimizer ---------------------------------------------------

def _prompt_model(length=3, config=TINY_CONFIG):
  return T5(config, encoder_prompt=soft.SoftPrompt(length=length))


def test_freezing_rules_must_cover_and_match():
  shapes, _ = params_lib.abstract_params(_prompt_model())
  mask = freezing.trainable_mask(shapes, freezing.PROMPT_TUNING_RULES)
  assert [k for k, v in mask.items() if v] == ["encoder_prompt/prompt"]
  with pytest.raises(ValueError, match="matched by no freezing rule"):
    freezing.trainable_mask(shapes, [("encoder_prompt/.*", True)])
  with pytest.raises(ValueError, match=r"\['encoder_promt/.\*'\] match no parameter"):
    freezing.trainable_mask(shapes, [("encoder_promt/.*", True), (".*", False)])
  with pytest.raises(ValueError, match="leave nothing trainable"):
    freezing.trainable_mask(shapes, [(".*", False)])


def _batch():
  enc = jnp.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]])
  tgt = jnp.array([[11, 12, 1], [13, 1, 0]])
  return dict(encoder_input_tokens=enc, decoder_target_tokens=tgt,
              decoder_input_tokens=shift_right(tgt),
              decoder_loss_weights=(tgt > 0).astype(jnp.float32))


def _setup(rules, config=TINY_CONFIG):
  model = _prompt_model(config=config)
  params = params_lib.init_params(model, jax.random.PRNGKey(0))
  mask = freezing.trainable_mask(params, rules)
  trainable, frozen = freezing.split(params, mask)
  return model, params, trainable, frozen


@pytest.mark.parametrize("jit", [False, True])
def test_prompt_update_changes_only_the_prompt(jit):
  model, params, trainable, frozen = _setup(freezing.PROMPT_TUNING_RULES)
  opt = optimizers.prompt_tuning_adafactor()
  opt_state = opt.init(trainable)
  # Optimizer state exists only for the trainable leaf.
  state_shapes = [x.shape for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0]
  assert all(s in [(3, TINY_CONFIG.emb_dim), (1,), (3,), (TINY_CONFIG.emb_dim,)]
             for s in state_shapes), state_shapes
  step = step_lib.make_train_step(model, opt)
  step = jax.jit(step) if jit else step
  new_trainable, _, metrics = step(trainable, opt_state, frozen, _batch(), jax.random.PRNGKey(0))
  assert np.isfinite(float(metrics["loss"]))
  before = tree_lib.flatten(params)
  after = tree_lib.flatten(freezing.merge(new_trainable, frozen))
  changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
  assert changed == ["encoder_prompt/prompt"]


def test_gradients_are_taken_only_for_trainable_leaves():
  model, _, trainable, frozen = _setup(freezing.PROMPT_TUNING_RULES)
  grads = jax.grad(lambda t: step_lib.loss_fn(t, frozen, model, _batch(), None, 1e-4)[0])(
      trainable)
  assert list(tree_lib.flatten(grads)) == ["encoder_prompt/prompt"]
  # The compiled step computes no weight gradient of the backbone: its FLOPs
  # are well below those of the same step with everything trainable.
  opt = optax.sgd(0.1)
  prompt_step = jax.jit(step_lib.make_train_step(model, opt))
  _, _, all_trainable, none_frozen = _setup(freezing.FULL_FINETUNING_RULES)
  full_step = jax.jit(step_lib.make_train_step(model, opt))
  rng = jax.random.PRNGKey(0)
  flops_prompt = prompt_step.lower(trainable, opt.init(trainable), frozen, _batch(),
                                   rng).compile().cost_analysis()["flops"]
  flops_full = full_step.lower(all_trainable, opt.init(all_trainable), none_frozen, _batch(),
                               rng).compile().cost_analysis()["flops"]
  assert flops_prompt < 0.8 * flops_full, (flops_prompt, flops_full)


def test_full_finetuning_is_the_same_code_with_everything_trainable():
  model, params, trainable, frozen = _setup(freezing.FULL_FINETUNING_RULES)
  assert frozen == {}
  opt = optax.adam(1e-2)
  new, _, _ = jax.jit(step_lib.make_train_step(model, opt))(
      trainable, opt.init(trainable), frozen, _batch(), jax.random.PRNGKey(0))
  before, after = tree_lib.flatten(params), tree_lib.flatten(new)
  # Leaves reached by the loss all move (the unused embedding rows aside).
  assert sum(not np.array_equal(before[k], after[k]) for k in before) == len(before)


def test_default_optimizer_has_the_papers_settings():
  opt = optimizers.prompt_tuning_adafactor()
  state = opt.init({"p": jnp.zeros((100, 8))})
  assert float(optimizers.current_learning_rate(state)) == pytest.approx(0.3)
  # Behaviour, not just arguments: one update equals optax.adafactor with the
  # paper's settings spelled out (decay 0.8, no parameter scaling, wd 1e-5).
  ref = optax.adafactor(0.3, decay_rate=0.8, multiply_by_parameter_scale=False,
                        weight_decay_rate=1e-5)
  params = {"p": jax.random.normal(jax.random.PRNGKey(0), (100, 8))}
  grads = {"p": jax.random.normal(jax.random.PRNGKey(1), (100, 8))}
  ours, _ = opt.update(grads, opt.init(params), params)
  theirs, _ = ref.update(grads, ref.init(params), params)
  np.testing.assert_allclose(ours["p"], theirs["p"], rtol=1e-6)
  other = optax.adafactor(0.3, decay_rate=0.99, multiply_by_parameter_scale=False)
  theirs2, _ = other.update(grads, other.init(params), params)
  assert not np.allclose(ours["p"], theirs2["p"])


def test_checkpoint_is_under_one_percent_of_the_backbone(tmp_path):
  # T5 1.1 base with the paper's 100-token prompt: save a real checkpoint of
  # what prompt tuning trains and compare with the backbone's bytes.
  shapes, _ = params_lib.abstract_params(T5(presets.preset("t5_1_1", "base")))
  backbone_bytes = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(shapes))
  prompt = np.random.RandomState(0).normal(size=(100, 768)).astype(np.float32)
  trainable = {"encoder_prompt": {"prompt": prompt}}  # random: incompressible
  opt_state = optimizers.prompt_tuning_adafactor().init(trainable)
  store = checkpoints_lib.CheckpointStore(str(tmp_path))
  store.save(1000, trainable, opt_state, data_position=1000)
  size = checkpoints_lib.directory_bytes(store.step_dir(1000))
  store.close()
  # The prompt (307 kB raw) is really in there, and the whole is ~0.03%.
  assert 250_000 < size < 0.01 * backbone_bytes, (size, backbone_bytes)


# --- bundled gin configs ------------------------------------------------------

@pytest.mark.parametrize("run,fn", [("runs/prompt_finetune.gin", "train"),
                                    ("runs/prompt_finetune_paper.gin", "train"),
                                    ("runs/prompt_eval.gin", "evaluate"),
                                    ("runs/prompt_infer.gin", "infer")])
@pytest.mark.parametrize("extra", [[], ["prompts/random_uniform.gin"],
                                   ["prompts/class_labels.gin"], ["prompts/from_string.gin"],
                                   ["prompts/from_file.gin"], ["decoding/beam_search.gin"],
                                   ["decoding/nucleus_sampling.gin"]])
def test_run_configs_parse_with_their_documented_macros(run, fn, extra):
  import gin
  from prompt_tuning.cli import gin as gin_utils
  gin.clear_config()
  gin_utils.parse_gin(["models/t5_1_1_small_prompt.gin", *extra, run],
                      ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 't'",
                       "INITIAL_CHECKPOINT_PATH = '/ckpt'", "CLASS_LABELS = ['a', 'b']",
                       "SENTENCEPIECE_MODEL = 'spm'", "PROMPT_TEXT = 'x'", "PROMPT_FILE = 'p.npy'"])
  assert str(gin.query_parameter(f"{fn}.model_dir")) == "%MODEL_DIR"
  assert gin.query_parameter("%MODEL_DIR") == "/tmp/x"
  assert str(gin.query_parameter(f"{fn}.model")) == "@ModelSpec()"
  assert str(gin.query_parameter("ModelSpec.encoder_prompt")) == "%ENCODER_PROMPT"
  assert gin.query_parameter("%PROMPT_LENGTH") == 100
  if "decoding/beam_search.gin" in extra and fn != "train":
    assert gin.query_parameter("DecodingConfig.method") == "beam"
  init = gin.query_parameter("SoftPrompt.init")
  want = (extra[0].split("/")[1][:-4] if extra and extra[0].startswith("prompts/")
          else "sampled_vocab")
  assert init.selector == f"prompt_init.{want}"
  gin.clear_config()
