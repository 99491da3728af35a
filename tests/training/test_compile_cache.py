"""training/compile_cache: a second process finds what the first compiled in the run's cache
directory, and computes the same bits. Subprocesses: JAX decides at a process's first
compilation whether it uses a persistent cache, and this test process has compiled before."""
import os
import subprocess
import sys

import numpy as np

SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from instructjax.training import compile_cache
compile_cache.enable(sys.argv[1], min_compile_time_s=0.0)  # Any machine: every compile counts.

def f(x, w):
  for _ in range(8):
    x = jnp.tanh(x @ w)
  return x.sum()

x = jnp.linspace(0.0, 1.0, 64 * 64, dtype=jnp.float32).reshape(64, 64)
np.save(sys.argv[2], np.asarray(jax.jit(jax.grad(f, argnums=1))(x, x / 64)))
"""


def run(cache_dir, out):
  subprocess.run([sys.executable, "-c", SCRIPT, str(cache_dir), str(out)], check=True,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  return sorted(os.listdir(cache_dir))


def test_a_second_process_reuses_the_first_ones_executables(tmp_path):
  cache = tmp_path / "run" / "compile_cache"
  first = run(cache, tmp_path / "a.npy")
  assert any(name.startswith("jit_f") for name in first), first
  second = run(cache, tmp_path / "b.npy")
  assert second == first  # Found, not compiled and written again.
  np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
