"""A stage stopped by SIGTERM is resumed later, never exported or scored as finished.

`loop.train` saves and returns early when preempted; the quickstart and the
research suite must not mark such a backbone DONE or score such a prompt.
"""

import os

import pytest

from prompt_tuning import backbones, quickstart


def _preempted(steps_done):
  def fake_train(**kwargs):
    os.makedirs(kwargs["model_dir"], exist_ok=True)
    return {"step": steps_done, "start_step": 0, "preempted_at_step": steps_done}
  return fake_train


def test_preempted_pretraining_is_not_exported_or_marked_done(tmp_path, monkeypatch):
  cfg = backbones.PretrainConfig(size="tiny", steps=300)
  monkeypatch.setattr(backbones.loop, "train", _preempted(120))
  with pytest.raises(backbones.Interrupted, match=r"step 120 of 300.*resume"):
    backbones.pretrain(cfg, str(tmp_path), progress=False)
  out = backbones.backbone_path(str(tmp_path), cfg)
  assert not os.path.exists(os.path.join(out, "DONE"))
  assert not os.path.exists(os.path.join(out, "checkpoint_300"))


def test_require_finished_accepts_a_complete_run_and_refuses_a_short_one():
  backbones.require_finished({"step": 50, "start_step": 0}, 50, "/x", "stage")
  with pytest.raises(backbones.Interrupted, match="stage stopped at step 49 of 50"):
    backbones.require_finished({"step": 49, "start_step": 0}, 50, "/x", "stage")
  with pytest.raises(backbones.Interrupted):
    backbones.require_finished({"step": 50, "preempted_at_step": 50}, 50, "/x", "stage")


def test_quickstart_cli_exits_cleanly_when_interrupted(monkeypatch, capsys):
  from prompt_tuning.cli import main as cli

  def interrupted(**kwargs):
    raise backbones.Interrupted("Pretraining the tiny backbone stopped at step 3 of 9")
  monkeypatch.setattr(quickstart, "run", interrupted)
  assert cli.main(["quickstart", "--size", "tiny"]) == 0
  assert "stopped at step 3 of 9" in capsys.readouterr().err
