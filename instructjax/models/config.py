"""Model configuration: one frozen, flat, JSON-serialisable dataclass for every family.

Flat (no nested rope-scaling object) so it maps one-to-one onto an ml_collections ConfigDict,
where every field can be overridden from the command line (`--config.model.n_layers=12`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from instructjax.config import ConfigError

FAMILIES = ("gpt2", "llama", "qwen2")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
DTYPES = ("float32", "bfloat16", "float16")
# instructjax/models/attention/dispatch.py says what each does.
ATTENTION_IMPLEMENTATIONS = ("auto", "reference", "blocked", "splash", "cudnn")
# Float32 logits elements (tokens x vocabulary) the losses and log-probs compute at once when
# logits_chunk_tokens is 0: 64 MiB a chunk.
AUTO_LOGITS_CHUNK_ELEMENTS = 2 ** 24


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only transformer. Family decides norm, positions, MLP and biases.

  gpt2:  pre-LayerNorm, learned positions, GELU (tanh) MLP, biases everywhere, tied embeddings.
  llama: RMSNorm, RoPE (optionally Llama-3 scaled), SwiGLU, grouped-query attention, no biases.
  qwen2: llama with biases on the q/k/v projections.
  """
  family: str = "llama"
  vocab_size: int = 128
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 4
  head_dim: int = 0  # 0: d_model // n_heads.
  d_ff: int = 256
  max_seq_len: int = 256
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # Llama-3 rope scaling; factor 0 disables it.
  rope_scaling_factor: float = 0.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  tie_embeddings: bool = False
  dropout_rate: float = 0.0
  init_std: float = 0.02
  param_dtype: str = "float32"
  dtype: str = "float32"  # Compute dtype of matmuls and the residual stream.
  remat: str = "none"
  scan_layers: bool = True  # False: the layer loop is unrolled (compile time grows with depth).
  attention: str = "auto"  # One of ATTENTION_IMPLEMENTATIONS.
  kv_cache_dtype: str = ""  # dtype of the KV cache; "": the compute dtype.
  # Tokens (rows x positions) whose [tokens, vocab] float32 logits the LM losses and log-probs
  # compute at once, from the final hidden states; 0: AUTO_LOGITS_CHUNK_ELEMENTS // vocab.
  logits_chunk_tokens: int = 0
  # Scalar head only. 0: the score is the head at a token. > 0: the model also keeps an LM head
  # and adds a learned weight (initialised to this value) times the log-likelihood it gives
  # the tokens after the shared prefix (the response): see DecoderLM.
  score_logprob: float = 0.0

  # ---- derived properties ----
  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def norm_type(self) -> str:
    return "layernorm" if self.family == "gpt2" else "rmsnorm"

  @property
  def learned_positions(self) -> bool:
    return self.family == "gpt2"

  @property
  def qkv_bias(self) -> bool:
    return self.family in ("gpt2", "qwen2")

  @property
  def out_bias(self) -> bool:
    return self.family == "gpt2"

  @property
  def gated_mlp(self) -> bool:
    return self.family != "gpt2"

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def jnp_kv_cache_dtype(self):
    return jnp.dtype(self.kv_cache_dtype or self.dtype)

  @property
  def resolved_logits_chunk_tokens(self) -> int:
    return self.logits_chunk_tokens or max(1, AUTO_LOGITS_CHUNK_ELEMENTS // self.vocab_size)

  def num_params(self, with_embeddings: bool = True) -> int:
    d, f, l = self.d_model, self.d_ff, self.n_layers
    hd = self.resolved_head_dim
    attn = d * hd * (self.n_heads * 2 + self.n_kv_heads * 2)
    mlp = d * f * (3 if self.gated_mlp else 2)
    total = l * (attn + mlp)
    if with_embeddings:
      total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
      if self.learned_positions:
        total += self.max_seq_len * d
    return total

  def validate(self, prefix: str = "model") -> "ModelConfig":
    """Raises ConfigError naming the offending key; returns self for chaining."""
    def fail(key, msg):
      raise ConfigError(f"config.{prefix}.{key}: {msg}")
    if self.family not in FAMILIES:
      fail("family", f"{self.family!r} is not one of {FAMILIES}")
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
      if getattr(self, key) <= 0:
        fail(key, f"must be positive, got {getattr(self, key)}")
    if self.n_heads % self.n_kv_heads:
      fail("n_kv_heads", f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
    if not self.head_dim and self.d_model % self.n_heads:
      fail("n_heads", f"d_model={self.d_model} is not divisible by n_heads={self.n_heads} "
           "(set model.head_dim explicitly)")
    if self.family == "gpt2" and self.n_kv_heads != self.n_heads:
      fail("n_kv_heads", "gpt2 has no grouped-query attention: n_kv_heads must equal n_heads")
    if self.family == "gpt2" and not self.tie_embeddings:
      fail("tie_embeddings", "gpt2 ties its input and output embeddings")
    if not self.learned_positions and self.resolved_head_dim % 2:
      fail("head_dim", f"RoPE needs an even head_dim, got {self.resolved_head_dim}")
    if self.remat not in REMAT_POLICIES:
      fail("remat", f"{self.remat!r} is not one of {REMAT_POLICIES}")
    for key in ("dtype", "param_dtype"):
      if getattr(self, key) not in DTYPES:
        fail(key, f"{getattr(self, key)!r} is not one of {DTYPES}")
    if self.kv_cache_dtype and self.kv_cache_dtype not in DTYPES:
      fail("kv_cache_dtype", f"{self.kv_cache_dtype!r} is not '' or one of {DTYPES}")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      fail("attention", f"{self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
    if self.logits_chunk_tokens < 0:
      fail("logits_chunk_tokens", f"must be >= 0, got {self.logits_chunk_tokens}")
    if self.score_logprob < 0:
      fail("score_logprob", f"must be >= 0 (0 = off), got {self.score_logprob}")
    if not 0.0 <= self.dropout_rate < 1.0:
      fail("dropout_rate", f"must be in [0, 1), got {self.dropout_rate}")
    if self.rope_scaling_factor and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      fail("rope_high_freq_factor", "must exceed rope_low_freq_factor")
    return self

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any], where: str = "model config") -> "ModelConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ConfigError(f"{where}: unknown model config keys {unknown}")
    return cls(**dict(d))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str, where: str = "model config") -> "ModelConfig":
    return cls.from_dict(json.loads(text), where)
