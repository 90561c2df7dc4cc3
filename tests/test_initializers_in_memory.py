"""Every prompt module initialized from an embedding table given in memory (issue 30).

What an initializer starts from comes as an argument: an `InitContext` (the
table [V, H] and the vocabulary) on the prompt modules, as the setup hands it
over. No table is on disk here, and the checkpoint readers and table loaders
are made to fail, so every value checked below came from the table in memory.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import readers
from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import (attempt, base, deep, hyper, ia3, initializers, input_dependent,
                                   masks, multi_task, per_layer, recursive, soft)
from tests.conftest import TINY_CONFIG

V, H = TINY_CONFIG.vocab_size, TINY_CONFIG.emb_dim
TABLE = np.random.RandomState(0).randn(V, H).astype(np.float32)  # every row distinct


class WordVocabulary:
  """encode(text): one id per word; 'not' and 'good' make a two-token label."""
  IDS = {"good": 5, "bad": 6, "not": 7, "classify": 8, "this": 9, "review": 10}

  def encode(self, text):
    return [self.IDS[w] for w in text.split()]


CONTEXT = base.InitContext(embeddings=TABLE, vocabulary=WordVocabulary())


@pytest.fixture
def nothing_read(monkeypatch):
  """Any read of a checkpoint or an embedding table fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"read from disk: {args}")
  monkeypatch.setattr(readers, "open_checkpoint", refuse)
  monkeypatch.setattr(initializers, "load_embeddings", refuse)


def _init(prompt, model_class=None, context=CONTEXT, seed=0, jit=True, **model_fields):
  """The prompt module's parameters, initialized the way the setup does (jitted).

  With `model_class` (T5 or a wrapper), inside that model; else the module
  alone on a dummy embedded input (cheaper, the same initializers).
  """
  prompt = base.with_init_context(base.for_model(prompt, TINY_CONFIG), context)
  if model_class is None:
    dummy = (jnp.zeros((1, 3, H)), jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3), bool))
    # nn.Module.init: a prompt module's `init` field (its initializer) shadows the method.
    init = lambda rng: nn.unbox(nn.Module.init(prompt, rng, *dummy))["params"]  # noqa: E731
  else:
    model = model_class(TINY_CONFIG, encoder_prompt=prompt, **model_fields)
    init = lambda rng: params_lib.init_params(model, rng)["encoder_prompt"]  # noqa: E731
  params = (jax.jit(init) if jit else init)(jax.random.PRNGKey(seed))
  return jax.tree.map(np.asarray, params)


def _ids(rows, table=TABLE):
  """The table row each row is; fails for a row that is none of them."""
  out = []
  for row in np.asarray(rows).reshape(-1, table.shape[1]):
    found = np.flatnonzero((table == row).all(axis=1))
    assert len(found) == 1, f"{row} is not a row of the table"
    out.append(int(found[0]))
  return out


def _label_row(label):
  return TABLE[WordVocabulary().encode(label)].mean(axis=0)


@pytest.mark.parametrize("jit", [False, True])
def test_soft_prompt_samples_rows_of_the_table_in_memory(nothing_read, jit):
  prompt = _init(soft.SoftPrompt(6, init=initializers.sampled_vocab(first_n=20)), jit=jit)
  ids = _ids(prompt["prompt"])
  assert len(set(ids)) == 6 and max(ids) < 20
  # The same draw jitted or not, another one from another seed.
  assert _ids(_init(soft.SoftPrompt(6, init=initializers.sampled_vocab(first_n=20)),
                    jit=not jit)["prompt"]) == ids
  assert _ids(_init(soft.SoftPrompt(6, init=initializers.sampled_vocab(first_n=20)),
                    seed=1)["prompt"]) != ids


def test_class_labels_and_strings_embed_with_the_vocabulary_handed_over(nothing_read):
  labels = ["good", "not good"]
  prompt = _init(soft.SoftPrompt(5, init=initializers.class_labels(labels)))["prompt"]
  np.testing.assert_allclose(prompt[0], TABLE[5], rtol=1e-6)
  np.testing.assert_allclose(prompt[1], _label_row("not good"), rtol=1e-6)
  assert not np.allclose(prompt[1], TABLE[7]) and not np.allclose(prompt[1], TABLE[5])
  assert len(_ids(prompt[2:])) == 3  # the rest: sampled rows of the same table
  text = _init(soft.SoftPrompt(4, init=initializers.from_string("classify this review")))
  np.testing.assert_array_equal(text["prompt"][:3], TABLE[[8, 9, 10]])
  _ids(text["prompt"][3:])
  # Too many labels for the prompt: one clear error when it is initialized.
  with pytest.raises(ValueError, match="2 class labels do not fit a prompt of length 1"):
    _init(soft.SoftPrompt(1, init=initializers.class_labels(labels)))


def test_without_a_vocabulary_text_initializers_say_so(nothing_read):
  no_vocabulary = base.InitContext(embeddings=TABLE)
  with pytest.raises(ValueError, match="tokenizes text, but has no vocabulary"):
    _init(soft.SoftPrompt(3, init=initializers.from_string("good")), context=no_vocabulary)
  # An explicit vocabulary needs none from the context.
  prompt = _init(soft.SoftPrompt(3, init=initializers.from_string(
      "bad", vocabulary=WordVocabulary())), context=no_vocabulary)["prompt"]
  np.testing.assert_array_equal(prompt[0], TABLE[6])


def test_banks_multi_task_and_masked_prompts_take_rows_of_the_table(nothing_read):
  bank = _init(multi_task.PromptBank(
      3, 4, init=initializers.sampled_vocab(first_n=None)))["prompts"]
  members = [tuple(_ids(bank[i])) for i in range(3)]
  assert len(set(members)) == 3, members  # each member its own key
  tasks = _init(multi_task.MultiTaskPrompt(4, num_tasks=2,
                                           init=initializers.sampled_vocab(first_n=None)))
  _ids(tasks["shared"])
  assert _ids(tasks["tasks"][0]) != _ids(tasks["tasks"][1])
  masked = _init(masks.MaskedPrompt(prompt=soft.SoftPrompt(
      3, init=initializers.class_labels(["bad"])), prompt_sees_inputs=False))
  np.testing.assert_array_equal(masked["prompt"]["prompt"][0], TABLE[6])


def test_per_layer_methods_beside_a_soft_prompt(nothing_read):
  """Deep prompts, HyperPrompt and IA3 have no table initializer; combined with a soft
  prompt, the context reaches the soft prompt inside and nothing is read."""
  combined = per_layer.CombinedPrompt(
      prompt=soft.SoftPrompt(4, init=initializers.sampled_vocab(first_n=None)),
      per_layer=(deep.DeepPrompt(length=2), hyper.HyperPrompt(num_tasks=2, length=2),
                 ia3.IA3()))
  params = _init(combined, T5)
  _ids(params["prompt"]["prompt"])
  assert params["per_layer_0"]["encoder_self_key"].shape[1] == 2
  assert params["per_layer_1"]["task_embedding"].shape[0] == 2
  # Input-dependent prompts: their generator has no table initializer either.
  generated = _init(input_dependent.InputDependentPrompt(length=3, width=8, num_heads=2,
                                                         mlp_dim=16))
  assert generated["queries"].shape == (3, 8)


def test_attempt_target_and_recursion_prompts_come_from_the_table(nothing_read, tmp_path):
  files = []
  for i in range(2):  # ATTEMPT's source prompts are its own files; the table is not.
    files.append(str(tmp_path / f"source_{i}.npy"))
    np.save(files[-1], np.random.RandomState(i).randn(3, H).astype(np.float32))
  single = _init(attempt.AttemptPrompt(tuple(files), bottleneck=4, first_n=30))
  assert max(_ids(single["target"])) < 30
  multi = _init(attempt.AttemptPrompt(tuple(files), bottleneck=4, first_n=30, num_tasks=2))
  assert multi["target"].shape == (2, 3, H)
  assert _ids(multi["target"][0]) != _ids(multi["target"][1])
  two_pass = _init(recursive.RecursionPrompts(
      length=3, first_init=initializers.sampled_vocab(first_n=None),
      second_init=initializers.from_string("not bad")), recursive.TextualRecursionT5,
      answer_length=2, train_pass=2)
  _ids(two_pass["first"])
  np.testing.assert_array_equal(two_pass["second"][:2], TABLE[[7, 6]])


def test_another_table_is_explicit(tmp_path, monkeypatch):
  """`embeddings` names another table (an array, a .npy file or a checkpoint): it wins
  over the context's; a path naming the context's own checkpoint is not read again."""
  other = -TABLE[:20]
  sampled = lambda source: initializers.sampled_vocab(embeddings=source, first_n=None)  # noqa
  prompt = _init(soft.SoftPrompt(4, init=sampled(other)))
  _ids(prompt["prompt"], other)
  path = str(tmp_path / "other.npy")
  np.save(path, other)
  reads = []
  real = initializers.load_embeddings
  monkeypatch.setattr(initializers, "load_embeddings",
                      lambda source: reads.append(source) or real(source))
  bank = _init(multi_task.PromptBank(2, 4, init=sampled(path)))
  _ids(bank["prompts"], other)
  assert reads == [path]  # once for the whole bank
  own = base.InitContext(embeddings=TABLE, checkpoint=path)
  _ids(_init(soft.SoftPrompt(4, init=sampled(path)), context=own)["prompt"])
  assert reads == [path]


def test_shapes_need_no_context_and_values_do():
  """Traced for shapes only (no context), an initializer reads nothing; computing its
  value without a context or a table is one clear error."""
  model = T5(TINY_CONFIG, encoder_prompt=soft.SoftPrompt(
      4, init=initializers.from_string("good")))
  shapes, _ = params_lib.abstract_params(model)
  assert shapes["encoder_prompt"]["prompt"].shape == (4, H)
  with pytest.raises(ValueError, match="starts from the backbone's embedding table, but it was "
                                       "called without an init context"):
    params_lib.init_params(model, jax.random.PRNGKey(0))
  with pytest.raises(Exception, match="computed without an init context"):
    jax.block_until_ready(jax.jit(lambda r: params_lib.init_params(model, r))(
        jax.random.PRNGKey(0)))
  with pytest.raises(ValueError, match="this model has no checkpoint"):
    _init(soft.SoftPrompt(4, init=initializers.sampled_vocab(first_n=None)),
          context=base.InitContext())
  # A plain Flax initializer takes no context and gets none.
  assert not base.takes_context(nn.initializers.uniform(0.5))
  assert base.takes_context(initializers.sampled_vocab())
