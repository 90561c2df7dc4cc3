"""Arguments are checked before any work: strict gin bindings, then every size and range.

Pure argument checks run `main()` in-process (the `main_in_process` fixture) with the
backbone reader patched to fail, which shows they happen before it is read.
"""

from tests.conftest import checkpoint_steps, error_line, leftovers


# --- strict bindings -----------------------------------------------------------


def test_misspelled_macro_is_an_error_naming_the_close_name(main_in_process, tmp_path):
  code, err = main_in_process("--gin.TRAIN_STEPZ=3")
  assert code == 2
  line = error_line(err)
  assert "TRAIN_STEPZ (--gin.TRAIN_STEPZ=3) is not used; did you mean TRAIN_STEPS?" in line
  assert "--gin.allow_unused=True" in line
  assert not (tmp_path / "model_dir").exists()  # Nothing ran.


def test_unused_binding_in_a_user_gin_file_names_file_and_line(main_in_process, tmp_path,
                                                                workdir):
  user = tmp_path / "my_run.gin"
  user.write_text(f"include '{workdir / 'tiny_model.gin'}'\n"
                  "CHECKPOINT_PERIODS = 5\n"
                  "DecodingConfig.top_k = 3\n")  # Train never decodes.
  code, err = main_in_process(model_gin=str(user))
  assert code == 2
  line = error_line(err)
  assert "CHECKPOINT_PERIODS (my_run.gin:2) is not used; did you mean CHECKPOINT_PERIOD?" in line
  assert "DecodingConfig.top_k (my_run.gin:3) is not used" in line


def test_allow_unused_turns_the_error_into_a_warning(stale_lock_run):
  run, _, result = stale_lock_run  # 1 step with --gin.TRAIN_STEPZ=3 --gin.allow_unused=True.
  assert result.returncode == 0, result.stderr[-3000:]
  assert "WARNING Unused gin bindings" in result.stderr and "TRAIN_STEPZ" in result.stderr
  assert checkpoint_steps(run) == [1]


def test_every_binding_the_bundled_runs_make_is_read(main_in_process, monkeypatch):
  # The bundled files with a user's usual flags pass the check (it is not
  # simply rejecting everything): stop right after it, at the task lookup.
  from prompt_tuning.cli import gin as gin_utils
  monkeypatch.setattr(gin_utils, "run_configured", lambda name: "checked")
  for command, flags in (("train", ("--gin.CHECKPOINT_PERIOD=2", "--gin.CheckpointSpec.keep=3",
                                     "--gin.LossSpec.z_loss=0.0", "--gin.DropoutSpec.enabled=False",
                                     "--gin.ReportSpec.frozen_digest=True",
                                     "--gin.ChecksSpec.on_non_finite='skip'")),
                         ("infer", ("--gin.CHECKPOINT_STEP=None",
                                    "--gin.InferenceSpec.max_examples=3")),
                         ("eval", ("--gin.EVAL_SPLIT='validation'",
                                   "--gin.InferenceSpec.ensemble_method='mean_log_prob'"))):
    code, err = main_in_process(*flags, command=command)
    assert code == 0, (command, err[-2000:])
  # The same flag where nothing reads it (train has no CHECKPOINT_STEP) is refused.
  code, err = main_in_process("--gin.CHECKPOINT_STEP=3")
  assert code == 2 and "CHECKPOINT_STEP (--gin.CHECKPOINT_STEP=3) is not used" in err
  # So is a spec the binary does not take, on the command line.
  code, err = main_in_process("--gin.CheckpointSpec.keep=3", command="infer")
  assert code == 2 and "CheckpointSpec.keep (--gin.CheckpointSpec.keep=3) " \
      "is not used" in err
  code, err = main_in_process("--gin.CheckpointSpec.keep=3", command="eval")
  assert code == 2 and "CheckpointSpec.keep (--gin.CheckpointSpec.keep=3) is not used" in err


def test_a_binding_from_before_the_specs_is_one_line_naming_the_new_one(main_in_process,
                                                                        tmp_path):
  code, err = main_in_process("--gin.train.checkpoint_period=2")
  assert code == 2
  assert "train.checkpoint_period is now CheckpointSpec.period" in error_line(err)
  user = tmp_path / "old_eval.gin"
  user.write_text("evaluate.max_examples = 5\n")
  code, err = main_in_process(f"--gin_file={user}", command="eval")
  assert code == 2
  line = error_line(err)
  assert "evaluate.max_examples is now InferenceSpec.max_examples" in line
  assert "old_eval.gin" in line and "line 1" in line
  assert not (tmp_path / "model_dir").exists()  # Nothing ran.


def test_a_shared_user_file_may_bind_the_specs_of_other_binaries(main_in_process, tmp_path,
                                                                 monkeypatch):
  # T5X's habit: one gin file for train, eval and infer. What the other binaries'
  # specs read is not a typo there, even though this run binds no such spec.
  from prompt_tuning.cli import gin as gin_utils
  monkeypatch.setattr(gin_utils, "run_configured", lambda name: "checked")
  shared = tmp_path / "shared.gin"
  shared.write_text("CheckpointSpec.keep = 3\nInferenceSpec.max_examples = 5\n")
  for command in ("train", "eval", "infer"):
    code, err = main_in_process(f"--gin_file={shared}", command=command)
    assert code == 0, (command, err[-2000:])
  shared.write_text("InferenceSpec.max_exampels = 5\n")  # A typo stays an error.
  code, err = main_in_process(f"--gin_file={shared}", command="eval")
  assert code == 2


# --- validation before work ------------------------------------------------------

def test_zero_prompt_length_is_refused_before_any_work(main_in_process, tmp_path):
  code, err = main_in_process("--gin.PROMPT_LENGTH=0")
  assert code == 2
  line = error_line(err)
  assert "PROMPT_LENGTH (encoder prompt SoftPrompt.length) must be a positive integer; " \
         "got 0" in line
  assert not (tmp_path / "model_dir").exists()
  assert leftovers(tmp_path) == []


def test_every_bad_size_is_named_in_one_line(main_in_process):
  code, err = main_in_process("--gin.BATCH_SIZE=0", "--gin.CHECKPOINT_PERIOD=-1",
                              "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 4}")
  assert code == 2
  line = error_line(err)
  for expected in ("BATCH_SIZE must be a positive integer; got 0",
                   "CHECKPOINT_PERIOD must be a positive integer; got -1",
                   "TASK_FEATURE_LENGTHS['inputs'] must be a positive integer; got 0"):
    assert expected in line
  code, err = main_in_process("--gin.TRAIN_STEPS=0")
  assert code == 2 and "TRAIN_STEPS must be a positive integer; got 0" in error_line(err)


def test_infer_refuses_bad_sampling_ranges_and_prompt_counts(main_in_process):
  code, err = main_in_process("--gin_file=decoding/nucleus_sampling.gin",
                              "--gin.DecodingConfig.top_p=1.5", "--gin.DecodingConfig.top_k=-2",
                              command="infer")
  assert code == 2
  line = error_line(err)
  assert "DecodingConfig.top_p must be in [0, 1]" in line and "got 1.5" in line
  assert "DecodingConfig.top_k must be an integer >= 0" in line and "got -2" in line
  code, err = main_in_process("--gin_file=prompts/multi_task.gin", "--gin.NUM_TASKS=0")
  assert code == 2
  assert "the number of tasks (encoder prompt MultiTaskPrompt.num_tasks) must be a positive " \
         "integer; got 0" in error_line(err)
