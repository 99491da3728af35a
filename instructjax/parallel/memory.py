"""Per-device memory plan of a training run, before anything is allocated.

Parameters, gradients and optimizer state are exact: the train state is built under
`jax.eval_shape` (nothing allocated), each leaf gets the sharding the run will use (the rules
of instructjax/sharding.py), and its per-device bytes are those of
`sharding.shard_shape(shape)`. Activations are an analytic estimate of the residuals the
backward pass keeps, each a tensor with logical axis names, so it is sharded by the same rules.

Activation formula. B batch, T sequence, d d_model, H query heads, K KV heads, Dh head dim,
F d_ff, V vocabulary, L layers; c = bytes of the compute dtype (2 bfloat16, 4 float32). The
softmax and the norms run in float32 (4 bytes). The attention implementation is the one
`model.attention` selects on the target backend (models/attention/dispatch.py): the
"reference" keeps [B, H, T, T] scores; the kernels (blocked, splash, cuDNN) keep q, k, v, the
output and a float32 log-sum-exp per query and head, linear in T. Per layer, by `model.remat`:

  "none"   B*T*d   * (4c + 16)    block input, norm inputs/outputs (+ norms' float32 internals)
         + B*T*(H + 2K)*Dh * c    q, k, v (after RoPE)
         + B*T*H*Dh * c           attention output
         + B*H*T*T * (4 + c)      reference: softmax output in float32 and its compute-dtype copy
         + B*H*T * 4              kernels: the log-sum-exp
         + 6 * B*T*F * c          MLP hidden (gate, up, silu and products; GELU: the same count)
         + W_layer * c            the layer's weights cast to the compute dtype (only when it
                                  differs from the parameter dtype)
  "full"   B*T*d * c              the block input; the layer is recomputed in the backward pass
  "dots"   B*T*d * 2c             block input, attention projection output
         + B*T*(H + 2K)*Dh * c    q, k, v
         + B*T*H*Dh * c           reference: attention output
         + B*H*T*T * 4            reference: attention scores (float32 einsum)
         + 2 * B*T*F * c          gate and up projections (GELU: one fc projection)
  "dots_with_no_batch_dims"       "dots" without the attention scores and output (their
                                  einsums have batch dimensions)
With a kernel, "dots" saves what "dots_with_no_batch_dims" does: the kernel's outputs are not
dots, so it runs again in the backward pass.

With remat, the layer being recomputed holds its "none" set transiently. Outside the layers:
the reference's attention mask (B*T*T bool; without remat the broadcast B*H*T*T bool and
float32 mask; the kernels read segment ids, and cuDNN a B*T*T bias in the compute dtype), the
final norm B*T*d * (c + 12) (LayerNorm: c + 16), and the LM head: unchunked (B*T tokens
within `model.logits_chunk_tokens`), its float32 logits, their exponent and a bool mask,
B*T*V * 9; chunked, only a chunk's float32 logits and their gradients at a time,
HEAD_CHUNK_ARRAYS * B*c*V * 4 (c positions a chunk). With tied embeddings and a non-float32
compute dtype the head's float32 transposed copy of the embedding, d*V * 4. With fsdp, weights
are all-gathered before use: the larger of one layer's gathered weights (compute dtype) and
the gathered float32 head counts as a transient. The blocked kernel holds
ATTENTION_BLOCK_ARRAYS float32 [B, H, block_q, block_k] score blocks at a time (splash and
cuDNN keep theirs in on-chip memory).

The per-layer counts are those of JAX's own residuals for this model (tests/scale check the
formula against `saved_residuals`, and the plan's total against XLA's memory analysis of the
compiled LM step). Not counted: XLA temporaries and fusion buffers, activation gradients in
flight (a few B*T*d), the optimizer's update buffers, the data pipeline. Treat the total as
an estimate; keep ~15% headroom.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from instructjax.config import ConfigError
from instructjax.models import DecoderLM, ModelConfig, attention
from instructjax.models.attention import blocked
from instructjax.ops.head_chunks import positions_per_chunk
from instructjax.parallel.sharding import ShardingContext, param_shardings
from instructjax.training.state import TrainState, boxed_param_init

GIB = 2 ** 30
_F32 = 4
# Chunk-sized float32 arrays of a chunked LM head live at once (logits, their exponent, their
# gradient, the next chunk's logits), measured in XLA's buffer assignment of the LM step.
HEAD_CHUNK_ARRAYS = 4
# Score-block-sized float32 arrays the blocked attention kernel holds at once (scores,
# probabilities, their gradient; same measurement).
ATTENTION_BLOCK_ARRAYS = 3

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the plan: bytes on one device and summed over the logical (global) array."""
  name: str
  per_device: int
  total: Optional[int]  # None: a per-device transient without a global counterpart.
  note: str = ""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Rows of per-device bytes for one model on one mesh at one batch x sequence length."""
  label: str
  num_params: int
  mesh_shape: dict[str, int]
  rules: str
  batch: int
  seq: int
  remat: str
  dtype: str
  rows: tuple[Row, ...]
  capacity: Optional[int] = None  # Bytes per device, when known.

  @property
  def per_device_total(self) -> int:
    return sum(r.per_device for r in self.rows)

  @property
  def fits(self) -> Optional[bool]:
    return None if self.capacity is None else self.per_device_total <= self.capacity

  def row(self, name: str) -> Row:
    for r in self.rows:
      if r.name == name:
        return r
    raise KeyError(name)

  def table(self) -> str:
    mesh = " ".join(f"{k}={v}" for k, v in self.mesh_shape.items())
    lines = [f"memory plan: {self.label} ({self.num_params / 1e9:.3g}B params), mesh {mesh}, "
             f"rules {self.rules}, batch {self.batch} x seq {self.seq}, remat {self.remat}, "
             f"compute {self.dtype}",
             "| item | per device | global | note |", "|---|---:|---:|---|"]
    for r in self.rows:
      total = "-" if r.total is None else fmt_bytes(r.total)
      lines.append(f"| {r.name} | {fmt_bytes(r.per_device)} | {total} | {r.note} |")
    lines.append(f"| **total** | **{fmt_bytes(self.per_device_total)}** | "
                 f"{fmt_bytes(sum(r.total or 0 for r in self.rows))} | |")
    if self.capacity is not None:
      verdict = "fits" if self.fits else "DOES NOT FIT"
      lines.append(f"device memory {fmt_bytes(self.capacity)}: {verdict} "
                   f"({100 * self.per_device_total / self.capacity:.0f}% used)")
    return "\n".join(lines)

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "per_device_total": self.per_device_total,
            "fits": self.fits}


def fmt_bytes(n: float) -> str:
  for unit, scale in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{int(n)} B"


# ----------------------------------------------------------------------------- exact: the state


def abstract_train_state(model: DecoderLM, tx: optax.GradientTransformation,
                         ctx: ShardingContext) -> TrainState:
  """The train state as ShapeDtypeStructs carrying the run's shardings (nothing allocated)."""
  init = boxed_param_init(model)

  def boxed_state(rng):
    boxed = init(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(boxed))

  boxed = jax.eval_shape(boxed_state, jax.random.key(0))
  shardings = param_shardings(ctx, boxed)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.meta.unbox(boxed), shardings)


def leaf_bytes(leaf: jax.ShapeDtypeStruct) -> tuple[int, int]:
  """(global bytes, bytes on one device) of an abstract array with a sharding."""
  itemsize = jnp.dtype(leaf.dtype).itemsize
  per_device = leaf.shape if leaf.sharding is None else leaf.sharding.shard_shape(leaf.shape)
  return int(np.prod(leaf.shape)) * itemsize, int(np.prod(per_device)) * itemsize


def tree_bytes(tree: Any) -> tuple[int, int]:
  """(global bytes, bytes on one device) summed over a pytree of abstract sharded arrays."""
  pairs = [leaf_bytes(x) for x in jax.tree.leaves(tree)]
  return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def _without_fsdp(sharding: NamedSharding) -> NamedSharding:
  """The layout after an fsdp all-gather: the same spec with the fsdp axis dropped."""
  def drop(entry):
    if entry is None:
      return None
    axes = tuple(a for a in ((entry,) if isinstance(entry, str) else entry) if a != "fsdp")
    return axes[0] if len(axes) == 1 else (axes or None)
  return NamedSharding(sharding.mesh, P(*(drop(e) for e in sharding.spec)))


def gathered_weight_bytes(cfg: ModelConfig, params: Any) -> tuple[int, int]:
  """(one layer's fsdp-gathered weights in the compute dtype, the gathered float32 head)."""
  c = cfg.jnp_dtype.itemsize
  layer, head = 0, 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if leaf.sharding is None or "fsdp" not in str(leaf.sharding.spec):
      continue  # Already whole on each device: nothing to gather.
    elems = int(np.prod(_without_fsdp(leaf.sharding).shard_shape(leaf.shape)))
    names = [str(getattr(k, "key", k)) for k in path]
    if "layers" in names:
      layer += elems // cfg.n_layers * c
    elif names[-1] in ("lm_head", "embed"):
      head = max(head, elems * _F32)  # The head runs in float32 (transformer.py).
  return layer, head


# ----------------------------------------------------------------------------- estimate: activations


@dataclasses.dataclass(frozen=True)
class Tensor:
  """`count` activations of one global shape, logical axes (for the sharding) and item size."""
  name: str
  shape: tuple[int, ...]
  axes: tuple[Optional[str], ...]
  itemsize: int
  count: int = 1

  def bytes(self, ctx: Optional[ShardingContext]) -> tuple[int, int]:
    """(global bytes, bytes on one device)."""
    total = int(np.prod(self.shape)) * self.itemsize * self.count
    if ctx is None:
      return total, total
    local = ctx.sharding(self.axes, self.shape).shard_shape(self.shape)
    return total, int(np.prod(local)) * self.itemsize * self.count


_BTD = ("act_batch", "act_length", "act_embed")
_BTF = ("act_batch", "act_length", "act_mlp")
_BTH = ("act_batch", "act_length", "act_heads", None)
_BTK = ("act_batch", "act_length", "act_kv_heads", None)
_BHTT = ("act_batch", "act_heads", "act_length", None)
_BHT = ("act_batch", "act_heads", "act_length")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")


def attention_implementation(cfg: ModelConfig, seq: int, backend: Optional[str] = None) -> str:
  """The attention implementation a [*, seq] training step runs on `backend` (default: this
  process's): `model.attention` resolved as models/attention/dispatch.py does."""
  return attention.select(cfg.attention, seq, seq, cfg.jnp_dtype, cfg.resolved_head_dim,
                          self_attention=True, backend=backend)


def layer_tensors(cfg: ModelConfig, batch: int, seq: int, remat: str = "none",
                  attention_impl: str = "reference") -> list[Tensor]:
  """The activations one layer keeps for its backward pass under `remat` (module docstring),
  with the attention implementation `attention_impl` ("reference" or a kernel).

  The weights' compute-dtype copies are not included: they depend on the parameter sharding
  (see `plan`).
  """
  if remat not in REMAT_POLICIES:
    raise ConfigError(f"config.model.remat: {remat!r} is not one of {REMAT_POLICIES}")
  b, t, d, f = batch, seq, cfg.d_model, cfg.d_ff
  h, k, dh, c = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim, cfg.jnp_dtype.itemsize
  reference = attention_impl == "reference"
  block_input = Tensor("block input", (b, t, d), _BTD, c)
  if remat == "full":
    return [block_input]
  qkv = [Tensor("q", (b, t, h, dh), _BTH, c), Tensor("k, v", (b, t, k, dh), _BTK, c, 2)]
  attn_out = Tensor("attention output", (b, t, h, dh), _BTH, c)
  if remat == "none":
    if reference:
      attn = [Tensor("softmax (float32)", (b, h, t, t), _BHTT, _F32),
              Tensor("softmax (compute dtype)", (b, h, t, t), _BHTT, c)]
    else:
      attn = [Tensor("attention log-sum-exp (float32)", (b, h, t), _BHT, _F32)]
    return [Tensor("residual stream, norm outputs", (b, t, d), _BTD, c, 4),
            Tensor("norm internals (float32)", (b, t, d), _BTD, _F32, 4), *qkv, *attn,
            attn_out, Tensor("MLP hidden", (b, t, f), _BTF, c, 6)]
  saved = [block_input, Tensor("attention projection", (b, t, d), _BTD, c), *qkv,
           Tensor("MLP projections", (b, t, f), _BTF, c, 2 if cfg.gated_mlp else 1)]
  if remat == "dots" and reference:
    saved += [Tensor("attention scores (float32)", (b, h, t, t), _BHTT, _F32), attn_out]
  return saved


def head_tensors(cfg: ModelConfig, batch: int, seq: int,
                 attention_impl: str = "reference") -> list[Tensor]:
  """What the model keeps outside its layers: mask, final norm, the LM head's float32 logits
  (or, chunked, a chunk's worth of them as a transient)."""
  b, t, c, h, v = batch, seq, cfg.jnp_dtype.itemsize, cfg.n_heads, cfg.vocab_size
  btv = ("act_batch", "act_length", "act_vocab")
  if attention_impl != "reference":  # Kernels read segment ids; cuDNN a bias built from them.
    mask = ([Tensor("attention mask bias (cuDNN)", (b, t, t), ("act_batch", "act_length", None),
                    c)] if attention_impl == "cudnn" else [])
  elif cfg.remat == "none":  # The per-head mask is hoisted out of the layer loop.
    mask = [Tensor("attention mask (bool + float32)", (b, h, t, t), _BHTT, 1 + _F32)]
  else:
    mask = [Tensor("attention mask", (b, t, t), ("act_batch", "act_length", None), 1)]
  norm_f32 = 4 if cfg.norm_type == "layernorm" else 3  # LayerNorm also keeps x - mean.
  out = [*mask, Tensor("final norm", (b, t, cfg.d_model), _BTD, c + norm_f32 * _F32)]
  chunk = positions_per_chunk(b, t, cfg.resolved_logits_chunk_tokens)
  if chunk:
    out.append(Tensor("LM head chunk (float32, transient)", (b, chunk, v), btv, _F32,
                      HEAD_CHUNK_ARRAYS))
  else:
    out.append(Tensor("logits, exp, mask", (b, t, v), btv, 2 * _F32 + 1))
  if cfg.tie_embeddings and c != _F32:  # JAX keeps the head's float32 transposed embedding.
    out.append(Tensor("tied head weight (float32)", (cfg.d_model, cfg.vocab_size),
                      ("embed", "vocab"), _F32))
  return out


def sum_bytes(tensors: Sequence[Tensor], ctx: Optional[ShardingContext]) -> tuple[int, int]:
  """(global bytes, bytes on one device) of `tensors`."""
  pairs = [x.bytes(ctx) for x in tensors]
  return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def layer_weight_copies(cfg: ModelConfig, params: Any) -> tuple[int, int]:
  """(global, per-device) bytes of all layers' weights cast to the compute dtype.

  Without remat each layer saves its `w.astype(dtype)`; nothing when the dtypes agree.
  """
  total, local = 0, 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if "layers" not in [str(getattr(k, "key", k)) for k in path]:
      continue
    if jnp.dtype(leaf.dtype) == cfg.jnp_dtype:
      continue
    g, l = leaf_bytes(leaf)
    scale = cfg.jnp_dtype.itemsize / jnp.dtype(leaf.dtype).itemsize
    total, local = total + int(g * scale), local + int(l * scale)
  return total, local


def activation_rows(cfg: ModelConfig, ctx: Optional[ShardingContext], batch: int,
                    seq: int, params: Any = None, attention_impl: str = "reference") -> list[Row]:
  """Rows for the layers' saved activations, the recomputed layer (remat) and the head."""
  saved_total, saved_local = sum_bytes(
      layer_tensors(cfg, batch, seq, cfg.remat, attention_impl), ctx)
  rows = [Row(f"activations: {cfg.n_layers} layers saved", saved_local * cfg.n_layers,
              saved_total * cfg.n_layers, f"remat {cfg.remat}, attention {attention_impl}")]
  if cfg.remat == "none" and params is not None:
    copies_total, copies_local = layer_weight_copies(cfg, params)
    if copies_total:
      rows.append(Row(f"activations: {cfg.dtype} weight copies", copies_local, copies_total,
                      "saved by every layer without remat"))
  if cfg.remat != "none":
    full_total, full_local = sum_bytes(layer_tensors(cfg, batch, seq, "none", attention_impl),
                                       ctx)
    rows.append(Row("activations: layer recomputed", full_local, full_total,
                    "transient, backward"))
  if attention_impl == "blocked":
    bq, bk = min(blocked.BLOCK_Q, seq), min(blocked.BLOCK_K, seq)
    blocks = Tensor("score blocks", (batch, cfg.n_heads, bq, bk), _BHTT, _F32,
                    ATTENTION_BLOCK_ARRAYS)
    block_total, block_local = blocks.bytes(ctx)
    rows.append(Row("activations: attention blocks", block_local, block_total,
                    f"transient, [{bq} x {bk}] per head"))
  head_total, head_local = sum_bytes(head_tensors(cfg, batch, seq, attention_impl), ctx)
  chunk = positions_per_chunk(batch, seq, cfg.resolved_logits_chunk_tokens)
  rows.append(Row("activations: mask, norm, logits", head_local, head_total,
                  f"float32 logits in chunks of {chunk} positions" if chunk
                  else "float32 logits"))
  return rows


# ----------------------------------------------------------------------------- the plan


def device_capacity() -> Optional[int]:
  """Bytes of memory of the first local device, if the backend reports it (not on CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  # Backends without stats raise variously.
    return None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def plan(model: DecoderLM, tx: optax.GradientTransformation, ctx: ShardingContext, batch: int,
         seq: int, rules_name: str = "", label: str = "model",
         capacity: Optional[int] = None, backend: Optional[str] = None) -> MemoryPlan:
  """The memory plan of training `model` with `tx` on `ctx`'s mesh at global batch x seq, on
  `backend` ("cpu", "gpu", "tpu"; default: this process's), which decides the attention
  implementation `model.attention = "auto"` runs."""
  cfg = model.cfg
  dp = ctx.data_parallel_size
  if batch % dp:
    raise ConfigError(f"batch {batch} is not divisible by the data-parallel size {dp}")
  state = abstract_train_state(model, tx, ctx)
  p_total, p_local = tree_bytes(state.params)
  o_total, o_local = tree_bytes(state.opt_state)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  pdt = cfg.param_dtype
  rows = [Row(f"parameters ({pdt})", p_local, p_total),
          Row(f"gradients ({pdt})", p_local, p_total, "live during the update"),
          Row("optimizer state", o_local, o_total, "AdamW: 2 moments")]
  rows += activation_rows(cfg, ctx, batch, seq, state.params,
                          attention_implementation(cfg, seq, backend))
  layer, head = gathered_weight_bytes(cfg, state.params)
  if layer or head:
    rows.append(Row("fsdp-gathered weights", max(layer, head), None,
                    "transient: one layer or the head"))
  return MemoryPlan(label=label, num_params=num_params, mesh_shape=dict(ctx.mesh.shape),
                    rules=rules_name, batch=batch, seq=seq, remat=cfg.remat, dtype=cfg.dtype,
                    rows=tuple(rows), capacity=capacity if capacity else device_capacity())


def log_plan(model: DecoderLM, tx: optax.GradientTransformation, ctx: ShardingContext,
             batch: int, seq: int, rules_name: str = "", label: str = "model"
             ) -> Optional[MemoryPlan]:
  """Logs the plan (process 0) before the state is allocated; warns when it will not fit.

  Advice only: a failure to plan is logged, never raised, so it cannot stop a run.
  """
  try:
    result = plan(model, tx, ctx, batch, seq, rules_name=rules_name, label=label)
  except Exception as e:  # pylint: disable=broad-except
    _log.warning("memory plan unavailable: %s", e)
    return None
  if jax.process_index() == 0:
    _log.info("%s", result.table())
    if result.fits is False:
      _log.warning("the memory plan needs %s per device but devices have %s: expect OOM "
                   "(more fsdp, remat, a smaller batch)", fmt_bytes(result.per_device_total),
                   fmt_bytes(result.capacity))
  return result


__all__ = ["MemoryPlan", "REMAT_POLICIES", "Row", "Tensor", "abstract_train_state",
           "activation_rows", "attention_implementation", "device_capacity", "fmt_bytes", "head_tensors", "layer_tensors",
           "log_plan", "plan", "sum_bytes", "tree_bytes"]
