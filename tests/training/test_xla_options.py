"""Compiler options of the train steps: applied on CPU, switchable off, and kept when a step
is wrapped by guard_nonfinite (a jit with options cannot be nested in another jit)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.parallel import xla_options
from instructjax.stages.jit import jit_step
from instructjax.training import guard_nonfinite


@pytest.fixture
def fresh_options(monkeypatch):
  xla_options.compiler_options.cache_clear()
  yield monkeypatch
  xla_options.compiler_options.cache_clear()


def step(state, batch, rng):
  del rng
  new = jax.nn.silu(state * batch["x"]) + 1.0
  return new, {"loss": jnp.sum(new) / batch["scale"]}


def elementwise_in_library(jitted, *args) -> bool:
  """Whether the compiled program hands the [256, 256] elementwise fusion (silu(s * x) + 1) to
  YNNPACK (without the options XLA:CPU gives it only the reduction)."""
  return any('"kind":"__ynn_fusion"' in line and "f32[256,256]" in line.split("=")[1][:20]
             for line in jitted.lower(*args).compile().as_text().splitlines() if "=" in line)


ARGS = (jnp.ones((256, 256)), {"x": jnp.ones((256, 256)), "scale": jnp.float32(1)}, None)


def test_cpu_steps_are_compiled_with_the_options(fresh_options):
  assert jax.default_backend() == "cpu"
  assert xla_options.compiler_options() == xla_options.CPU_COMPILER_OPTIONS
  assert elementwise_in_library(jit_step(step, None, None), *ARGS)
  fresh_options.setenv(xla_options.DISABLE_ENV, "1")
  xla_options.compiler_options.cache_clear()
  assert xla_options.compiler_options() is None
  assert not elementwise_in_library(jit_step(step, None, None), *ARGS)


def test_guarded_step_keeps_the_options_without_nesting(fresh_options):
  guarded = guard_nonfinite(jit_step(step, None, None))
  state = jnp.ones((256, 256))
  new, m = guarded(state, {"x": jnp.ones((256, 256)), "scale": jnp.float32(1)}, None)
  assert m["skipped"] == 0
  np.testing.assert_allclose(new, jax.nn.silu(1.0) + 1.0, rtol=1e-6)
  kept, m = guarded(new, {"x": jnp.ones((256, 256)), "scale": jnp.float32(0)}, None)  # loss = inf.
  assert m["skipped"] == 1 and not np.isfinite(m["loss"])
  np.testing.assert_allclose(kept, jax.nn.silu(1.0) + 1.0, rtol=1e-6)
  fresh_options.setenv(xla_options.DISABLE_ENV, "1")
  xla_options.compiler_options.cache_clear()
  plain = guard_nonfinite(jit_step(step, None, None))
  assert elementwise_in_library(guarded, *ARGS) and not elementwise_in_library(plain, *ARGS)
