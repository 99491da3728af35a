"""Test session set-up: 8 host CPU devices, so sharded and single-device results can be compared.

XLA_FLAGS must be set before jax is first imported, which is why this lives in conftest.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One persistent compilation cache for each test process (each pytest-xdist worker has its own)
# and the scripts it starts (they inherit the environment): the tests build the same tiny models
# and steps again and again, in-process and in subprocesses, and on a 2-core CPU compiling them
# is most of the suite's time.
# Executables are XLA's own, so results are bitwise those of a compile. Removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile

  _cache_dir = tempfile.mkdtemp(prefix="instructjax-tests-jax-cache-")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
