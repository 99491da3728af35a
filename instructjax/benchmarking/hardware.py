"""What a device can do at best: peak matmul FLOP/s and memory bandwidth.

Accelerators: a table of published dense (no sparsity) peaks per chip, matched on
`device.device_kind`. For float32 compute on NVIDIA GPUs the TF32 tensor-core peak is used
(XLA runs float32 dots as TF32 at JAX's default matmul precision there). CPUs have no useful
published number for a shared, throttled VM, so their peak is *measured*: the best FLOP/s of a
large jnp.dot in the compute dtype (`measure_matmul_peak`), and says so ("source": "measured").
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp

TERA = 1e12


@dataclasses.dataclass(frozen=True)
class Peak:
  """Peak dense matmul FLOP/s (bf16 and float32 compute) and HBM bandwidth, bytes/s."""
  name: str
  bf16_flops: float
  f32_flops: float
  hbm_bytes_per_s: Optional[float]


# Matched in order against device_kind (lower case); the first hit wins.
KNOWN_PEAKS: tuple[tuple[str, Peak], ...] = (
    ("gh200", Peak("NVIDIA GH200", 989 * TERA, 494 * TERA, 4.0 * TERA)),
    ("h200", Peak("NVIDIA H200", 989 * TERA, 494 * TERA, 4.8 * TERA)),
    ("h100 pcie", Peak("NVIDIA H100 PCIe", 756 * TERA, 378 * TERA, 2.0 * TERA)),
    ("h100", Peak("NVIDIA H100 SXM", 989 * TERA, 494 * TERA, 3.35 * TERA)),
    ("b200", Peak("NVIDIA B200", 2250 * TERA, 1100 * TERA, 8.0 * TERA)),
    ("a100-sxm4-80gb", Peak("NVIDIA A100 80GB", 312 * TERA, 156 * TERA, 2.039 * TERA)),
    ("a100 80gb", Peak("NVIDIA A100 80GB PCIe", 312 * TERA, 156 * TERA, 1.935 * TERA)),
    ("a100", Peak("NVIDIA A100 40GB", 312 * TERA, 156 * TERA, 1.555 * TERA)),
    ("l40s", Peak("NVIDIA L40S", 362 * TERA, 183 * TERA, 0.864 * TERA)),
    ("l4", Peak("NVIDIA L4", 121 * TERA, 60 * TERA, 0.3 * TERA)),
    ("a10", Peak("NVIDIA A10", 125 * TERA, 62.5 * TERA, 0.6 * TERA)),
    ("v6 lite", Peak("TPU v6e", 918 * TERA, 918 * TERA, 1.64 * TERA)),
    ("v6e", Peak("TPU v6e", 918 * TERA, 918 * TERA, 1.64 * TERA)),
    ("v5 lite", Peak("TPU v5e", 197 * TERA, 197 * TERA, 0.819 * TERA)),
    ("v5e", Peak("TPU v5e", 197 * TERA, 197 * TERA, 0.819 * TERA)),
    ("v5p", Peak("TPU v5p", 459 * TERA, 459 * TERA, 2.765 * TERA)),
    ("v5", Peak("TPU v5p", 459 * TERA, 459 * TERA, 2.765 * TERA)),
    ("v4", Peak("TPU v4", 275 * TERA, 275 * TERA, 1.228 * TERA)),
)


def known_peak(device_kind: str) -> Optional[Peak]:
  kind = device_kind.lower()
  for key, peak in KNOWN_PEAKS:
    if key in kind:
      return peak
  return None


def measure_matmul_peak(dtype="float32", n: int = 2048, reps: int = 10,
                        seconds: float = 0.3) -> float:
  """Best FLOP/s of a jitted [n, n] x [n, n] jnp.dot on the default device (2 n^3 FLOPs).

  Each repetition runs the dot enough times to last about `seconds`; the best repetition is
  the peak (the least disturbed by other processes on a shared machine).
  """
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32).astype(dtype)
  dot = jax.jit(lambda x, y: jnp.dot(x, y))
  dot(a, b).block_until_ready()
  start = time.perf_counter()
  dot(a, b).block_until_ready()
  once = max(time.perf_counter() - start, 1e-6)
  inner = max(1, int(seconds / once))
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    out = None
    for _ in range(inner):
      out = dot(a, b)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - start) / inner)
  return 2.0 * n ** 3 / best


@dataclasses.dataclass(frozen=True)
class DevicePeak:
  """Peak FLOP/s for the compute dtype, HBM bandwidth (or None), and where they came from."""
  device_kind: str
  platform: str
  flops: float
  hbm_bytes_per_s: Optional[float]
  source: str  # "table: <name>" or "measured: jnp.dot <n>x<n> <dtype>"
  matmul_n: Optional[int] = None  # Size of the measured matmul (measured peaks only).

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def device_peak(compute_dtype: str = "float32", matmul_n: int = 2048) -> DevicePeak:
  """The peak of the first local device: from the table, else measured (CPUs, unknown chips)."""
  dev = jax.local_devices()[0]
  peak = known_peak(dev.device_kind) if dev.platform != "cpu" else None
  if peak is not None:
    flops = peak.f32_flops if jnp.dtype(compute_dtype) == jnp.float32 else peak.bf16_flops
    return DevicePeak(dev.device_kind, dev.platform, flops, peak.hbm_bytes_per_s,
                      f"table: {peak.name} dense {'tf32/f32' if flops == peak.f32_flops else 'bf16'}")
  flops = measure_matmul_peak(compute_dtype, matmul_n)
  return DevicePeak(dev.device_kind, dev.platform, flops, None,
                    f"measured: best jnp.dot {matmul_n}x{matmul_n} {compute_dtype}", matmul_n)


def memory_stats() -> Optional[dict]:
  """`device.memory_stats()` of the first local device, or None where the backend has none."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  # Backends without stats raise variously.
    return None
  return dict(stats) if stats else None


def peak_memory_bytes() -> Optional[int]:
  stats = memory_stats()
  if not stats:
    return None
  for key in ("peak_bytes_in_use", "bytes_in_use"):
    if key in stats:
      return int(stats[key])
  return None


def host_info() -> dict:
  """CPU count and load average (shared machines make CPU timings noisy: report them)."""
  try:
    load = os.getloadavg()
  except OSError:
    load = (float("nan"),) * 3
  dev = jax.local_devices()[0]
  return {"cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in load],
          "platform": dev.platform, "device_kind": dev.device_kind,
          "num_devices": jax.device_count(), "jax": jax.__version__}


__all__ = ["DevicePeak", "KNOWN_PEAKS", "Peak", "device_peak", "host_info", "known_peak",
           "measure_matmul_peak", "memory_stats", "peak_memory_bytes"]
