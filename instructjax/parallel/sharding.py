"""Mesh and logical-axis rules, declared once.

Models name logical axes only (parameters: "vocab", "embed", "heads", "kv_heads", "head_dim",
"mlp", "layers", "norm"; activations: "act_batch", "act_length", "act_embed", "act_heads",
"act_kv_heads", "act_mlp", "act_vocab"). A preset of rules maps them onto the mesh axes
(data, fsdp, tensor). Activations use their own names so that a preset can shard parameters'
"embed" over fsdp while activations' batch uses fsdp too.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from instructjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

_BATCH = ("act_batch", ("data", "fsdp"))
_REPLICATED_ACTS = (("act_length", None), ("act_embed", None), ("act_kv_heads", None))

RULE_PRESETS: dict[str, tuple[tuple[str, Any], ...]] = {
    # Pure data parallelism: parameters replicated, batch split over every mesh axis but tensor.
    "dp": (_BATCH, *_REPLICATED_ACTS, ("act_heads", None), ("act_mlp", None), ("act_vocab", None),
           ("vocab", None), ("embed", None), ("heads", None), ("kv_heads", None),
           ("head_dim", None), ("mlp", None), ("layers", None), ("norm", None)),
    # ZeRO-3 style: parameters (and so optimizer state) split along embed over fsdp.
    "fsdp": (_BATCH, *_REPLICATED_ACTS, ("act_heads", None), ("act_mlp", None), ("act_vocab", None),
             ("vocab", None), ("embed", "fsdp"), ("heads", None), ("kv_heads", None),
             ("head_dim", None), ("mlp", None), ("layers", None), ("norm", None)),
    # fsdp plus Megatron tensor parallelism over heads, MLP hidden and vocab.
    "fsdp_tp": (_BATCH, *_REPLICATED_ACTS, ("act_heads", "tensor"), ("act_mlp", "tensor"),
                ("act_vocab", "tensor"), ("vocab", "tensor"), ("embed", "fsdp"),
                ("heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None), ("mlp", "tensor"),
                ("layers", None), ("norm", None)),
}


def get_rules(name: str) -> tuple[tuple[str, Any], ...]:
  if name not in RULE_PRESETS:
    raise ConfigError(f"config.mesh.rules: {name!r} is not one of {sorted(RULE_PRESETS)}")
  return RULE_PRESETS[name]


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Fills one axis given as -1 with the remaining devices; checks the product."""
  shape = [data, fsdp, tensor]
  if sum(s == -1 for s in shape) > 1:
    raise ConfigError("config.mesh: at most one of data, fsdp, tensor may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  for name, s in zip(MESH_AXES, shape):
    if s == 0 or s < -1:
      raise ConfigError(f"config.mesh.{name}: must be positive or -1, got {s}")
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"config.mesh: {num_devices} devices are not divisible by the fixed "
                        f"axes' product {known} (data={data}, fsdp={fsdp}, tensor={tensor})")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ConfigError(f"config.mesh: data*fsdp*tensor = {int(np.prod(shape))} but there are "
                      f"{num_devices} devices")
  return tuple(shape)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def mesh_from_config(mesh_cfg, devices=None) -> Mesh:
  return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, devices)


def _axis_size(mesh: Mesh, mesh_axes) -> int:
  if mesh_axes is None:
    return 1
  if isinstance(mesh_axes, str):
    mesh_axes = (mesh_axes,)
  return int(np.prod([mesh.shape[a] for a in mesh_axes]))


def logical_to_spec(logical_axes: Sequence[Optional[str]], rules, mesh: Optional[Mesh] = None,
                    shape: Optional[Sequence[int]] = None) -> P:
  """Logical names -> PartitionSpec. With `shape`, a dimension the mesh axes do not divide
  is replicated instead (e.g. GPT-2's 50257-token vocabulary over tensor=2)."""
  spec = list(nn.logical_to_mesh_axes(tuple(logical_axes), rules))
  if shape is not None and mesh is not None:
    for i, (axes, dim) in enumerate(zip(spec, shape)):
      if axes is not None and dim % _axis_size(mesh, axes):
        logging.debug("dimension %d of size %d is not divisible by mesh axes %s: replicated",
                      i, dim, axes)
        spec[i] = None
  return P(*spec)


@dataclasses.dataclass(frozen=True)
class ShardingContext:
  """What a model needs to constrain activations: the mesh and the rules. Hashable."""
  mesh: Mesh
  rules: tuple

  def constrain(self, x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
    spec = logical_to_spec(logical_axes, self.rules, self.mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def sharding(self, logical_axes, shape=None) -> NamedSharding:
    return NamedSharding(self.mesh, logical_to_spec(logical_axes, self.rules, self.mesh, shape))

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def batch_sharding(self, ndim: int) -> NamedSharding:
    """Leading axis over (data, fsdp), the rest replicated."""
    return self.sharding(("act_batch",) + (None,) * (ndim - 1))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())


def constrain(ctx: Optional[ShardingContext], x, logical_axes):
  """with_sharding_constraint by logical names; identity without a sharding context."""
  return x if ctx is None else ctx.constrain(x, logical_axes)


def param_shardings(ctx: ShardingContext, boxed_abstract_tree) -> Any:
  """NamedShardings for a tree of (possibly) nn.LogicallyPartitioned abstract values.

  Leaves without logical metadata (e.g. optimizer step counters) are replicated.
  """
  def leaf_sharding(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return ctx.sharding(leaf.names, leaf.value.shape)
    return ctx.replicated()
  return jax.tree.map(leaf_sharding, boxed_abstract_tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
