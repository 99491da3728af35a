"""Model FLOPs and bytes of the benchmarked steps (what the work costs, not what XLA executes).

Notation: B sequences of T tokens, L layers, d_attn = n_heads * head_dim, N_mm the parameters
that take part in a matmul for every token: all layer weights plus the output head (d * V for
an LM head, d for a scalar head). The input embedding is a gather, not a matmul: not counted.

Training FLOPs of one sequence (forward + backward = 3 x forward, PaLM appendix B):

    6 * N_mm * T                 dense matmuls (2 per multiply-add, x3 for fwd + bwd)
  + 6 * L * T^2 * d_attn         attention: QK^T and AV are 2 * T^2 * d_attn FLOPs each per
                                 layer forward (4 T^2 d_attn), x3 for fwd + bwd = 12 L T^2 d_attn
                                 for full attention; causal masking leaves half of the
                                 score matrix useful: 6 L T^2 d_attn.

A forward pass alone is a third of that (2 N_mm T + 2 L T^2 d_attn). MFU = model FLOPs per
second / peak FLOP/s of the device; the model FLOPs do not depend on what the implementation
recomputes (remat) or wastes (masked halves of the score matrix, padding tokens), so MFU
is comparable across implementations. Tokens count every position of the batch, padding
included (all of them are computed).

Decode (one new token for each of B rows, cache of S slots): the step must read every weight
once and the keys/values of the cache, so its memory-bound time is

    (weight bytes + 2 * L * B * S * n_kv_heads * head_dim * itemsize) / HBM bandwidth,

the "HBM roofline" of a decode step. Our attention reads all S = P + N slots of the cache every
step (masked ones included), so S is the whole cache, which is also what the kernel reads.
"""
from __future__ import annotations

from instructjax.models import ModelConfig


def matmul_params(cfg: ModelConfig, head: str = "lm") -> int:
  """N_mm: layer weights plus the output head (d * V for "lm", d for "scalar")."""
  head_params = cfg.d_model * (cfg.vocab_size if head == "lm" else 1)
  return cfg.num_params(with_embeddings=False) + head_params


def attention_dim(cfg: ModelConfig) -> int:
  return cfg.n_heads * cfg.resolved_head_dim


def forward_flops(cfg: ModelConfig, batch: int, seq: int, head: str = "lm") -> float:
  """Model FLOPs of one forward pass over [batch, seq] with causal attention."""
  dense = 2.0 * matmul_params(cfg, head) * seq
  attn = 2.0 * cfg.n_layers * seq * seq * attention_dim(cfg)
  return batch * (dense + attn)


def train_flops(cfg: ModelConfig, batch: int, seq: int, head: str = "lm") -> float:
  """Model FLOPs of forward + backward over [batch, seq]: B * (6 N_mm T + 6 L T^2 d_attn)."""
  return 3.0 * forward_flops(cfg, batch, seq, head)


def param_bytes(cfg: ModelConfig, head: str = "lm", dtype_itemsize: int | None = None) -> int:
  """Bytes of all parameters (embeddings included) at `dtype_itemsize` (default param_dtype)."""
  n = cfg.num_params(with_embeddings=True)
  if head == "scalar" and not cfg.tie_embeddings:
    n -= cfg.d_model * cfg.vocab_size - cfg.d_model  # A scalar head instead of lm_head.
  size = dtype_itemsize or cfg.jnp_param_dtype.itemsize
  return n * size


def kv_cache_bytes(cfg: ModelConfig, batch: int, slots: int, itemsize: int | None = None) -> int:
  """Bytes of keys and values of every layer: 2 * L * B * S * n_kv_heads * head_dim * itemsize."""
  size = itemsize or cfg.jnp_dtype.itemsize
  return 2 * cfg.n_layers * batch * slots * cfg.n_kv_heads * cfg.resolved_head_dim * size


def decode_step_bytes(cfg: ModelConfig, batch: int, slots: int,
                      weight_itemsize: int | None = None) -> int:
  """Bytes one decode step must read: all weights once + the whole KV cache.

  The embedding table is only gathered (B rows), so it is left out unless it is also the
  (tied) output head.
  """
  size = weight_itemsize or cfg.jnp_dtype.itemsize
  weights = cfg.num_params(with_embeddings=False) + cfg.d_model * cfg.vocab_size
  return weights * size + kv_cache_bytes(cfg, batch, slots)


def ppo_update_flops(policy: ModelConfig, value: ModelConfig, rows: int, seq: int, epochs: int,
                     ptx_rows: int = 0, ptx_seq: int = 0) -> float:
  """Model FLOPs of the PPO update: every epoch trains the policy and the value model on all
  rollout rows (and the policy on the ptx rows)."""
  per_epoch = (train_flops(policy, rows, seq, "lm") + train_flops(value, rows, seq, "scalar")
               + (train_flops(policy, ptx_rows, ptx_seq, "lm") if ptx_rows else 0.0))
  return epochs * per_epoch


def ppo_score_flops(policy: ModelConfig, value: ModelConfig, rm: ModelConfig, rows: int,
                    seq: int) -> float:
  """Model FLOPs of the rollout's recompute: policy, reference, value and RM forwards."""
  return (2 * forward_flops(policy, rows, seq, "lm") + forward_flops(value, rows, seq, "scalar")
          + forward_flops(rm, rows, seq, "scalar"))


__all__ = ["attention_dim", "decode_step_bytes", "forward_flops", "kv_cache_bytes",
           "matmul_params", "param_bytes", "ppo_score_flops", "ppo_update_flops", "train_flops"]
