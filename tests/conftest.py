"""Test session set-up: 8 host CPU devices, so sharded and single-device results can be compared.

XLA_FLAGS must be set before jax is first imported, which is why this lives in conftest.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
