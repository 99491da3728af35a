"""A run told to stop (SIGTERM, SIGINT) saves and stops, and resumes bitwise; a damaged latest
checkpoint is set aside with a warning and the run resumes from the one before."""
import logging
import os
import signal

import jax
import pytest

from instructjax.training import (CheckpointConfig, CheckpointError, Checkpointer,
                                  checkpoint_dir, run_loop)
from instructjax.training import interrupts
import training_toy as toy


def _run(workdir, num_steps, hooks=(), it=None):
  it = it if it is not None else toy.ToyIterator(seed=3)
  return run_loop(toy.make_step(), toy.init_state(), it, jax.random.key(42),
                  num_steps=num_steps, workdir=str(workdir), log_every=4, save_every=5,
                  checkpoint=CheckpointConfig(max_to_keep=3, async_save=False), hooks=hooks,
                  progress=False)


def signal_at(step_to_signal, signum):
  def hook(step, metrics):
    if step == step_to_signal:
      os.kill(os.getpid(), signum)
  return hook


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_the_loop_saves_that_step_and_stops(tmp_path, signum):
  ref, _ = _run(tmp_path / "ref", 12)
  with interrupts.handled():
    state, summary = _run(tmp_path / "w", 12, hooks=[signal_at(7, signum)])
  assert summary.stop_reason == "preempted" and summary.final_step == 7
  assert summary.checkpoint_steps == [5, 7]
  assert interrupts.last_signal() == signum
  state, summary = _run(tmp_path / "w", 12)  # The same command again.
  assert summary.resumed_from == 7 and summary.final_step == 12
  toy.assert_trees_bitwise_equal(state, ref)


def test_a_second_signal_or_one_outside_the_loop_stops_at_once(tmp_path):
  with interrupts.handled():  # One run...
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
      os.kill(os.getpid(), signal.SIGTERM)  # Not in the loop: sampling, evaluation, ...

  with interrupts.handled():  # ...and another.
    def twice(step, metrics):
      if step == 3:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(interrupts.Interrupted, match="SIGINT"):
      _run(tmp_path / "w", 12, hooks=[twice])
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Handlers restored.


def damage(workdir, step, how):
  """Breaks one file of a saved step as a kill or a full disk might."""
  root = os.path.join(checkpoint_dir(str(workdir)), str(step))
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
  if how == "truncate_arrays":
    target = max((f for f in files if "/state/" in f), key=os.path.getsize)
    with open(target, "r+b") as f:
      f.truncate(os.path.getsize(target) // 3)
  elif how == "delete_iterator_state":
    os.remove(next(f for f in files if f.endswith("/data_iter/metadata")))
  elif how == "garble_rng":
    with open(next(f for f in files if f.endswith("/rng/metadata")), "w") as f:
      f.write("{not json")
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncate_arrays", "delete_iterator_state", "garble_rng"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, how, caplog):
  ref, _ = _run(tmp_path / "ref", 12)
  _run(tmp_path / "w", 10)  # Checkpoints 5 and 10.
  damage(tmp_path / "w", 10, how)
  with caplog.at_level(logging.WARNING):
    state, summary = _run(tmp_path / "w", 12)
  assert summary.resumed_from == 5 and summary.final_step == 12
  toy.assert_trees_bitwise_equal(state, ref)
  assert any("checkpoint step 10" in r.getMessage() and "does not read back" in r.getMessage()
             for r in caplog.records)
  aside = checkpoint_dir(str(tmp_path / "w")) + "_damaged"
  assert os.listdir(aside) == ["10"]  # Kept for inspection, out of the way of the new step 10.
  assert 10 in summary.checkpoint_steps


def test_no_readable_checkpoint_is_one_clear_error_and_nothing_is_moved(tmp_path):
  _run(tmp_path / "w", 5)
  damage(tmp_path / "w", 5, "garble_rng")
  with pytest.raises(CheckpointError, match=r"no checkpoint in .* reads back: step 5: "):
    _run(tmp_path / "w", 12)
  assert os.path.isdir(os.path.join(checkpoint_dir(str(tmp_path / "w")), "5"))
  with Checkpointer(checkpoint_dir(str(tmp_path / "w"))) as ckpt:
    assert ckpt.all_steps() == [5]


def test_a_signal_whose_exception_was_lost_stops_at_the_next_check():
  with interrupts.handled():
    try:
      os.kill(os.getpid(), signal.SIGTERM)
    except interrupts.Interrupted:
      pass  # Lost, as in a garbage-collection callback, where Python prints and ignores it.
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
      interrupts.check()  # The stages call this between their long phases.
  interrupts.check()  # Nothing pending once the run is over.
