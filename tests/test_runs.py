"""The run directory's layout and the checks every training verb makes before it starts."""

from __future__ import annotations

import json

import pytest

from pocketlm import runs
from pocketlm.errors import UserError


def _checkpoint(run, name=runs.CHECKPOINT):
    (run / name).mkdir(parents=True)
    (run / name / runs.TRAINER_STATE).write_bytes(b"state")


def test_a_new_run_starts_and_an_old_one_is_not_overwritten(tmp_path):
    assert runs.check_start(tmp_path / "new", resume=False) is None
    _checkpoint(tmp_path / "old")
    with pytest.raises(UserError, match="already holds a run; use --resume"):
        runs.check_start(tmp_path / "old", resume=False)
    assert runs.check_start(tmp_path / "old", resume=True) == tmp_path / "old" / runs.CHECKPOINT


def test_resume_needs_a_complete_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        runs.check_start(tmp_path, resume=True)
    (tmp_path / runs.CHECKPOINT).mkdir()  # a directory without the trainer's state is not a checkpoint
    assert runs.latest_checkpoint(tmp_path) is None


def test_a_checkpoint_caught_mid_swap_is_recovered(tmp_path):
    # a crash between the two renames of an atomic directory swap leaves only checkpoint.old
    _checkpoint(tmp_path, runs.CHECKPOINT + ".old")
    assert runs.latest_checkpoint(tmp_path) == tmp_path / runs.CHECKPOINT
    assert (tmp_path / runs.CHECKPOINT / runs.TRAINER_STATE).read_bytes() == b"state"


def test_finished_means_ended_by_its_budget(tmp_path):
    assert not runs.is_finished(tmp_path) and not runs.is_run(tmp_path)
    (tmp_path / runs.METRICS).write_text("")
    (tmp_path / runs.SUMMARY).write_text(json.dumps({"stopped": "interrupted"}))
    assert runs.is_run(tmp_path) and not runs.is_finished(tmp_path)
    (tmp_path / runs.SUMMARY).write_text(json.dumps({"stopped": "budget"}))
    assert runs.is_finished(tmp_path)
    (tmp_path / runs.SUMMARY).write_text("{")
    with pytest.raises(UserError, match="summary.json: not valid JSON"):
        runs.read_summary(tmp_path)
