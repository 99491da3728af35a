"""TPU slices by name: what gcloud calls them, how many chips and hosts, and a mesh for them.

One JAX device per chip (v4 and v5p expose their two TensorCores as one megacore device), so
the mesh's data * fsdp * tensor is the chip count. The meshes shard the train state with fsdp
inside fast ICI neighbourhoods and keep the rest data-parallel:

  v4-8      4 chips x 32 GiB, 1 host    fsdp=4              models up to ~1B with AdamW
  v4-32     16 chips x 32 GiB, 4 hosts  fsdp=16             8B: ~8 GiB of state per chip
  v5e-8     8 chips x 16 GiB, 1 host    fsdp=8              up to ~1B with remat
  v5e-16    16 chips x 16 GiB, 4 hosts  fsdp=8, tensor=2    8B with remat; tensor=2 halves the
                                                            activations and float32 logits
  v5e-256   256 chips x 16 GiB, 64 hosts data=16, fsdp=8, tensor=2  as v5e-16, data-parallel x16
  v5p-8     4 chips x 95 GiB, 1 host    fsdp=4              8B fits (~32 GiB of state per chip)
  v5p-128   64 chips x 95 GiB, 16 hosts data=4, fsdp=16     8B; fsdp within 16 chips, DP across

`python experiments/memory_plan.py --slice=v5e-16 --preset=llama-8b` checks one against a
model; override any axis with `--config.mesh.*` as usual.
"""
from __future__ import annotations

import dataclasses

from instructjax.config import ConfigError
from instructjax.parallel.sharding import RULE_PRESETS


@dataclasses.dataclass(frozen=True)
class SlicePreset:
  """A TPU VM slice and the mesh the recipe runs on it.

  Attributes:
    name: short name ("v5e-16").
    accelerator_type: gcloud's --accelerator-type ("v5litepod-16").
    runtime_version: gcloud's --version (TPU VM software image).
    chips: JAX devices in the slice.
    hosts: TPU VM workers (processes of a run).
    hbm_gib: memory per chip.
    data, fsdp, tensor, rules: the mesh (instructjax/sharding.py).
  """
  name: str
  accelerator_type: str
  runtime_version: str
  chips: int
  hosts: int
  hbm_gib: float
  data: int
  fsdp: int
  tensor: int
  rules: str

  def __post_init__(self):
    if self.data * self.fsdp * self.tensor != self.chips:
      raise ConfigError(f"slice {self.name}: data*fsdp*tensor = "
                        f"{self.data * self.fsdp * self.tensor} but it has {self.chips} chips")
    if self.rules not in RULE_PRESETS:
      raise ConfigError(f"slice {self.name}: rules {self.rules!r} not in {sorted(RULE_PRESETS)}")
    if self.chips % self.hosts:
      raise ConfigError(f"slice {self.name}: {self.chips} chips over {self.hosts} hosts")

  @property
  def chips_per_host(self) -> int:
    return self.chips // self.hosts

  @property
  def hbm_bytes(self) -> int:
    return int(self.hbm_gib * 2 ** 30)

  def mesh_overrides(self) -> dict[str, object]:
    """Config overrides that put a stage on this mesh."""
    return {"mesh.data": self.data, "mesh.fsdp": self.fsdp, "mesh.tensor": self.tensor,
            "mesh.rules": self.rules}

  def mesh_flags(self) -> list[str]:
    return [f"--config.{k}={v}" for k, v in self.mesh_overrides().items()]


_V4 = dict(runtime_version="tpu-ubuntu2204-base", hbm_gib=32.0)
_V5E = dict(runtime_version="v2-alpha-tpuv5-lite", hbm_gib=16.0)
_V5P = dict(runtime_version="v2-alpha-tpuv5", hbm_gib=95.0)

SLICES: dict[str, SlicePreset] = {s.name: s for s in (
    SlicePreset("v4-8", "v4-8", chips=4, hosts=1, data=1, fsdp=4, tensor=1, rules="fsdp", **_V4),
    SlicePreset("v4-32", "v4-32", chips=16, hosts=4, data=1, fsdp=16, tensor=1, rules="fsdp",
                **_V4),
    SlicePreset("v5e-8", "v5litepod-8", chips=8, hosts=1, data=1, fsdp=8, tensor=1,
                rules="fsdp", **_V5E),
    SlicePreset("v5e-16", "v5litepod-16", chips=16, hosts=4, data=1, fsdp=8, tensor=2,
                rules="fsdp_tp", **_V5E),
    SlicePreset("v5e-256", "v5litepod-256", chips=256, hosts=64, data=16, fsdp=8, tensor=2,
                rules="fsdp_tp", **_V5E),
    SlicePreset("v5p-8", "v5p-8", chips=4, hosts=1, data=1, fsdp=4, tensor=1, rules="fsdp",
                **_V5P),
    SlicePreset("v5p-128", "v5p-128", chips=64, hosts=16, data=4, fsdp=16, tensor=1,
                rules="fsdp", **_V5P),
)}


def get_slice(name: str) -> SlicePreset:
  if name not in SLICES:
    raise ConfigError(f"unknown TPU slice {name!r}; known: {', '.join(SLICES)}")
  return SLICES[name]
