"""guard_nonfinite (in-jit skip under donation) and the device-side first-bad-step tracker."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.training import NonFiniteError, NonfiniteTracker, guard_nonfinite
import training_toy as toy


def _batch(poison: bool):
  it = toy.ToyIterator(poison=(0,) if poison else ())
  return next(it)


def test_guard_keeps_state_on_nan_and_updates_otherwise():
  guarded = guard_nonfinite(toy.make_step("policy_loss"))
  state = toy.init_state()
  state, m = guarded(state, _batch(False), jax.random.key(0))
  assert int(m["skipped"]) == 0 and int(state["count"]) == 1
  # Copies: numpy views of CPU buffers would hold references that block donation.
  before = jax.tree.map(lambda x: np.array(x, copy=True), state)
  new, m = guarded(state, _batch(True), jax.random.key(1))
  assert int(m["skipped"]) == 1 and np.isnan(float(m["policy_loss"]))
  assert state["params"]["w"].is_deleted(), "the state should have been donated"
  toy.assert_trees_bitwise_equal(jax.device_get(new), before)


def test_guard_checks_named_keys_only():
  def step(state, batch, rng):
    return state + 1, {"loss": jnp.float32(1.0), "aux": jnp.float32(jnp.inf)}
  s, m = guard_nonfinite(step)(jnp.zeros(2), None, None)
  assert int(m["skipped"]) == 0 and float(s[0]) == 1.0
  s, m = guard_nonfinite(step, keys=["aux"])(jnp.zeros(2), None, None)
  assert int(m["skipped"]) == 1 and float(s[0]) == 0.0
  with pytest.raises(KeyError, match="missing_loss"):
    guard_nonfinite(step, keys=["missing_loss"])(jnp.zeros(2), None, None)


def test_tracker_reports_first_bad_step_and_kind():
  tracker = NonfiniteTracker(None)
  tracker.update(1, {"a_loss": jnp.float32(1.0), "b_loss": jnp.float32(2.0), "lr": 1.0})
  tracker.raise_if_nonfinite()
  tracker.update(2, {"a_loss": jnp.float32(1.0), "b_loss": jnp.array([1.0, -jnp.inf]), "lr": 1.0})
  tracker.update(3, {"a_loss": jnp.float32(jnp.nan), "b_loss": jnp.float32(jnp.nan), "lr": 1.0})
  assert tracker.keys == ("a_loss", "b_loss")
  with pytest.raises(NonFiniteError, match=r"^step 2: b_loss is -inf$"):
    tracker.raise_if_nonfinite()


def test_tracker_needs_a_loss_to_watch():
  with pytest.raises(ValueError, match="nonfinite_keys"):
    NonfiniteTracker(None).update(1, {"accuracy": jnp.float32(1.0)})
  tracker = NonfiniteTracker(())  # Explicitly watching nothing is allowed.
  tracker.update(1, {"accuracy": jnp.float32(jnp.nan)})
  tracker.raise_if_nonfinite()
