"""run_loop: bitwise resume, iterator/rng/host-state restore, logging, keep-best, non-finite."""
import glob
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from instructjax.tokenizer import CharTokenizer
from instructjax.training import (CheckpointConfig, Checkpointer, Hook, NonFiniteError,
                                  checkpoint_dir, load_checkpoint_tokenizer, read_metrics,
                                  read_model_config, run_loop)
import training_toy as toy


class CoefHook(Hook):
  """A PPO-style adaptive coefficient: fed into each batch, updated from the step's loss."""

  name = "coef_controller"

  def __init__(self):
    self.coef = 0.01
    self.updates = 0

  def before_step(self, step, batch, ctx):
    return {**batch, "coef": np.float32(self.coef)}

  def after_step(self, step, metrics, ctx):
    self.coef = float(np.float32(self.coef * (1.1 if float(metrics["loss"]) > 0.5 else 0.9)))
    self.updates += 1
    return None

  def get_state(self):
    return {"coef": self.coef, "updates": self.updates}

  def set_state(self, state):
    self.coef, self.updates = state["coef"], state["updates"]


def _counter(step, metrics):
  """Plain-callable hook: its returned mapping becomes checkpointed host state."""
  return {"calls": step}


def _run(workdir, num_steps, it=None, hook=None, rng=None, **kw):
  it = it if it is not None else toy.ToyIterator(seed=3)
  hook = hook if hook is not None else CoefHook()
  kw.setdefault("checkpoint", CheckpointConfig(max_to_keep=2))
  state, summary = run_loop(
      toy.make_step(), toy.init_state(), it, jax.random.key(42) if rng is None else rng,
      num_steps=num_steps,
      workdir=str(workdir), log_every=4, save_every=5, hooks=[hook, _counter], progress=False,
      **kw)
  return state, summary, it, hook


def test_resume_is_bitwise_identical_and_restores_everything(tmp_path):
  ref_state, ref_summary, ref_it, ref_hook = _run(tmp_path / "ref", 13)
  assert ref_summary.final_step == 13 and ref_summary.resumed_from is None
  assert ref_it.seen == list(range(13))

  # Interrupted at step 7 (a final checkpoint is written there), then resumed with fresh objects;
  # the rng passed on resume is ignored in favour of the saved one.
  work = tmp_path / "resumed"
  _, first, _, _ = _run(work, 7, model_config={"dim": toy.DIM}, tokenizer=CharTokenizer("ab"))
  assert first.final_step == 7 and first.checkpoint_steps == [5, 7]
  it = toy.ToyIterator(seed=3)
  state, summary, it, hook = _run(work, 13, it=it, rng=jax.random.key(999))

  assert summary.resumed_from == 7 and summary.start_step == 7 and summary.final_step == 13
  assert it.seen == list(range(7, 13)), "iterator position not restored"
  assert (hook.coef, hook.updates) == (ref_hook.coef, ref_hook.updates), "hook state lost"
  toy.assert_trees_bitwise_equal(state, ref_state)
  assert int(state["count"]) == 13

  # Checkpointed host state (from the callable hook) is logged, and no step is logged twice.
  train = read_metrics(str(work), split="train")
  assert [r["step"] for r in train] == [4, 7, 8, 12, 13]
  assert train[-1]["host/calls"] == 13
  assert train[-1]["loss"] == ref_summary.train_metrics["loss"]
  # The checkpoint directory describes itself.
  ckdir = checkpoint_dir(str(work))
  assert read_model_config(ckdir) == {"dim": toy.DIM}
  assert load_checkpoint_tokenizer(ckdir) == CharTokenizer("ab")


def test_resume_after_crash_uses_latest_checkpoint(tmp_path):
  ref_state, *_ = _run(tmp_path / "ref", 12)

  class Crash(CoefHook):
    def after_step(self, step, metrics, ctx):
      super().after_step(step, metrics, ctx)
      if step == 9:
        raise RuntimeError("simulated crash")

  with pytest.raises(RuntimeError, match="simulated crash"):
    _run(tmp_path / "w", 12, hook=Crash())
  # Bytes iterator states (utf-8 and binary) go through the same path as dicts.
  it = toy.ToyIterator(seed=3, state_kind="binary")
  state, summary, it, _ = _run(tmp_path / "w", 12, it=it)
  assert summary.resumed_from == 5 and it.seen == list(range(5, 12))
  toy.assert_trees_bitwise_equal(state, ref_state)
  # The interrupted run logged step 8; the resumed one replaced it rather than duplicating it.
  steps = [r["step"] for r in read_metrics(str(tmp_path / "w"), split="train")]
  assert steps == sorted(set(steps)) == [4, 8, 12]


def test_resume_with_wrong_rng_or_position_would_differ(tmp_path):
  """Guards the bitwise test against passing vacuously: the toy is sensitive to both."""
  ref_state, *_ = _run(tmp_path / "a", 6, checkpoint=None)
  other_rng, *_ = run_loop(toy.make_step(), toy.init_state(), toy.ToyIterator(seed=3),
                           jax.random.key(7), num_steps=6, workdir=str(tmp_path / "b"),
                           hooks=[CoefHook()], checkpoint=None, progress=False)
  it = toy.ToyIterator(seed=3)
  next(it)
  shifted, *_ = _run(tmp_path / "c", 6, it=it, checkpoint=None)
  for other in (other_rng, shifted):
    with pytest.raises(AssertionError):
      toy.assert_trees_bitwise_equal(other, ref_state)


def test_metrics_and_tensorboard_written(tmp_path):
  def eval_fn(state, step):
    return {"loss": jax.numpy.sum(state["params"]["w"] ** 2), "step_seen": step}

  _, summary, _, _ = _run(tmp_path, 10, eval_every=5, eval_fn=eval_fn, checkpoint=None)
  train = read_metrics(str(tmp_path), split="train")
  evals = read_metrics(str(tmp_path), split="eval")
  assert [r["step"] for r in train] == [4, 8, 10]
  assert {"loss", "grad_norm", "steps_per_sec", "host/calls"} <= set(train[0])
  assert all(isinstance(r["loss"], float) and np.isfinite(r["loss"]) for r in train)
  assert [(r["step"], r["step_seen"]) for r in evals] == [(5, 5), (10, 10)]
  assert summary.eval_metrics["step_seen"] == 10
  events = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  assert events and os.path.getsize(events[0]) > 0
  assert summary.checkpoint_steps == [] and not os.path.exists(checkpoint_dir(str(tmp_path)))


def test_keep_best_and_max_to_keep_in_loop(tmp_path):
  # Eval "loss" is best at step 4; saves every 5 would miss it, so save and eval every 2.
  def eval_fn(state, step):
    return {"loss": float(abs(step - 4))}

  cfg = CheckpointConfig(max_to_keep=1, best_metric="loss", best_mode="min")
  state, summary = run_loop(
      toy.make_step(), toy.init_state(), toy.ToyIterator(), jax.random.key(0), num_steps=10,
      workdir=str(tmp_path), log_every=0, eval_every=2, eval_fn=eval_fn, save_every=2,
      checkpoint=cfg, progress=False)
  assert summary.checkpoint_steps == [4, 10]
  assert summary.best_step == 4
  with Checkpointer(checkpoint_dir(str(tmp_path)), cfg) as ckpt:
    restored = ckpt.restore(4, target=toy.init_state())
  assert int(restored.state["count"]) == 4


def test_nonfinite_raises_naming_step_and_metric(tmp_path):
  # Batch 36 is step 37. Checks run at log steps (every 10): the error names step 37 anyway.
  it = toy.ToyIterator(poison=(36,))
  with pytest.raises(NonFiniteError, match=r"^step 37: policy_loss is nan$"):
    run_loop(toy.make_step("policy_loss"), toy.init_state(), it, jax.random.key(0),
             num_steps=60, workdir=str(tmp_path), log_every=10, save_every=20, progress=False)
  assert it.position == 40  # Stopped at the first check after the NaN, not at the end.
  with Checkpointer(checkpoint_dir(str(tmp_path))) as ckpt:
    assert ckpt.all_steps() == [20]  # The NaN state was never checkpointed.


def test_nonfinite_skip_keeps_state_and_counts(tmp_path):
  it = toy.ToyIterator(poison=(36, 37))
  state, summary = run_loop(
      toy.make_step("policy_loss"), toy.init_state(), it, jax.random.key(0), num_steps=45,
      workdir=str(tmp_path), log_every=10, save_every=20, on_nonfinite="skip", progress=False)
  assert summary.skipped_updates == 2
  assert int(state["count"]) == 43  # The two NaN steps did not update the state.
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  skipped = {r["step"]: r["skipped_total"] for r in read_metrics(str(tmp_path), split="train")}
  assert skipped == {10: 0, 20: 0, 30: 0, 40: 2, 45: 2}
  # The count survives a resume.
  state, summary = run_loop(
      toy.make_step("policy_loss"), toy.init_state(), toy.ToyIterator(poison=(36, 37)),
      jax.random.key(0), num_steps=50, workdir=str(tmp_path), log_every=10, save_every=20,
      on_nonfinite="skip", progress=False)
  assert summary.resumed_from == 45 and summary.skipped_updates == 2
  assert int(state["count"]) == 48


def test_resume_onto_another_mesh_from_abstract_state(tmp_path):
  devices = np.array(jax.devices())
  assert devices.size == 8, "tests/conftest.py should give 8 host CPU devices"
  mesh8, mesh4 = Mesh(devices, ("data",)), Mesh(devices[:4], ("model",))
  run_loop(toy.make_step(), toy.shard_state(toy.init_state(), mesh8), toy.ToyIterator(),
           jax.random.key(0), num_steps=5, workdir=str(tmp_path), log_every=0, progress=False)
  # Resume on 4 devices, passing only the abstract state (no init): shapes + target shardings.
  abstract = jax.eval_shape(toy.init_state)
  target = toy.shard_state(toy.init_state(), mesh4)
  abstract = jax.tree.map(
      lambda a, t: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=t.sharding), abstract, target)
  state, summary = run_loop(toy.make_step(), abstract, toy.ToyIterator(), jax.random.key(0),
                            num_steps=7, workdir=str(tmp_path), log_every=0, progress=False)
  assert summary.resumed_from == 5 and int(state["count"]) == 7
  w = state["params"]["w"]
  assert w.sharding.mesh.devices.size == 4 and w.sharding.spec[0] == "model"


def test_abstract_state_without_checkpoint_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="abstract"):
    run_loop(toy.make_step(), jax.eval_shape(toy.init_state), toy.ToyIterator(),
             jax.random.key(0), num_steps=2, workdir=str(tmp_path), progress=False)


def test_data_exhaustion_stops_and_saves(tmp_path):
  state, summary = run_loop(toy.make_step(), toy.init_state(), toy.ToyIterator(length=6),
                            jax.random.key(0), num_steps=10, workdir=str(tmp_path),
                            log_every=4, progress=False)
  assert summary.stop_reason == "data_exhausted" and summary.final_step == 6
  assert summary.checkpoint_steps == [6]
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [4, 6]
