"""HF tensor names and layouts <-> instructjax parameters, in numpy.

instructjax layout (layers stacked on a leading [L] axis under params["layers"]):
  q/k/v kernels [L, d, heads, head_dim], biases [L, heads, head_dim]; o kernel [L, heads,
  head_dim, d]; MLP kernels [in, out]; lm_head [d, vocab]; score_kernel [d, 1], score_bias [1].
HF layouts: torch Linear weights are [out, in]; GPT-2's Conv1D weights are [in, out] with q, k
and v fused in `c_attn` ([d, 3d]). Heads are contiguous blocks of head_dim along the projection
axis in both, and both rotate halves for RoPE, so no permutation is needed.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from instructjax.hf.config import HFConversionError
from instructjax.models.config import ModelConfig

Params = dict[str, Any]

# Buffers some checkpoints carry that are not parameters (causal masks, rotary tables).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def base_prefix(cfg: ModelConfig, names) -> str:
  """"transformer." / "model." for task models, "" for a bare GPT2Model / LlamaModel."""
  names = set(names)
  if cfg.family == "gpt2":
    return "transformer." if "transformer.wte.weight" in names else ""
  return "model." if "model.embed_tokens.weight" in names else ""


# ----------------------------------------------------------------------------- HF -> instructjax


def hf_to_params(cfg: ModelConfig, head: str, get: Callable[[str], np.ndarray], names,
                 strict: bool = True) -> tuple[Params, list[str]]:
  """Builds instructjax params (numpy, cfg.param_dtype) from HF tensors.

  Args:
    get: name -> numpy tensor (reads lazily).
    names: every tensor name in the checkpoint.
    strict: raise if the checkpoint has tensors the conversion did not use (e.g. a feature
      the config did not announce), rather than silently dropping them.
  Returns:
    (params, names of tensors read).
  """
  names = set(names)
  pdt = jnp.dtype(cfg.param_dtype)
  pre = base_prefix(cfg, names)
  used: list[str] = []

  def read(name: str) -> np.ndarray:
    if name not in names:
      raise HFConversionError(f"checkpoint lacks tensor {name!r} (for {cfg.family}, head={head})")
    used.append(name)
    return np.asarray(get(name)).astype(pdt)

  d, h, hkv, dh, n = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim,
                      cfg.n_layers)
  # Layer by layer into preallocated [L, ...] arrays: peak memory stays near one model copy.
  stacked: dict[str, np.ndarray] = {}
  for i in range(n):
    try:
      layer = (_gpt2_layer(read, f"{pre}h.{i}.", d, h, dh) if cfg.family == "gpt2"
               else _llama_layer(read, f"{pre}layers.{i}.", cfg.family, d, h, hkv, dh))
      for key, value in traverse_util.flatten_dict(layer, sep="/").items():
        if i == 0:
          stacked[key] = np.empty((n,) + value.shape, value.dtype)
        stacked[key][i] = value
    except ValueError as e:  # numpy reshape/broadcast: a tensor does not fit the config.
      if isinstance(e, HFConversionError):
        raise
      raise HFConversionError(f"layer {i}: tensor shapes do not match config.json ({e})") from e
  params: Params = {"layers": traverse_util.unflatten_dict(stacked, sep="/")}
  if cfg.family == "gpt2":
    params["embed"] = read(f"{pre}wte.weight")
    params["pos_embed"] = read(f"{pre}wpe.weight")
    params["final_norm"] = {"scale": read(f"{pre}ln_f.weight"), "bias": read(f"{pre}ln_f.bias")}
  else:
    params["embed"] = read(f"{pre}embed_tokens.weight")
    params["final_norm"] = {"scale": read(f"{pre}norm.weight")}

  if head == "scalar":
    score = read("score.weight")  # [1, d]; HF's score layer has no bias.
    params["score_kernel"] = np.ascontiguousarray(score.T)
    params["score_bias"] = np.zeros((1,), pdt)
  elif cfg.tie_embeddings:
    if "lm_head.weight" in names:  # Some exports write the tied copy; it must really be tied.
      if not np.array_equal(read("lm_head.weight"), params["embed"]):
        raise HFConversionError("config says tie_word_embeddings but lm_head.weight differs "
                                "from the input embedding")
  else:
    params["lm_head"] = np.ascontiguousarray(read("lm_head.weight").T)

  _check_shapes(cfg, head, params)
  leftover = sorted(k for k in names - set(used) if not k.endswith(_IGNORED_SUFFIXES))
  if strict and leftover:
    raise HFConversionError(
        f"checkpoint has tensors the {cfg.family} conversion does not use: {leftover[:8]}"
        f"{' ...' if len(leftover) > 8 else ''}; refusing to drop them silently")
  return params, used


def _llama_layer(read, p: str, family: str, d: int, h: int, hkv: int, dh: int) -> Params:
  def proj(name, n):
    return np.ascontiguousarray(read(f"{p}self_attn.{name}_proj.weight").T.reshape(d, n, dh))
  attn = {"q_kernel": proj("q", h), "k_kernel": proj("k", hkv), "v_kernel": proj("v", hkv),
          "o_kernel": np.ascontiguousarray(read(f"{p}self_attn.o_proj.weight").T.reshape(h, dh, d))}
  if family == "qwen2":
    for name, heads in (("q", h), ("k", hkv), ("v", hkv)):
      attn[f"{name}_bias"] = read(f"{p}self_attn.{name}_proj.bias").reshape(heads, dh)
  mlp = {f"{k}_kernel": np.ascontiguousarray(read(f"{p}mlp.{k}_proj.weight").T)
         for k in ("gate", "up", "down")}
  return {"attn": attn, "mlp": mlp,
          "attn_norm": {"scale": read(f"{p}input_layernorm.weight")},
          "mlp_norm": {"scale": read(f"{p}post_attention_layernorm.weight")}}


def _gpt2_layer(read, p: str, d: int, h: int, dh: int) -> Params:
  w = read(f"{p}attn.c_attn.weight")  # [d, 3d], Conv1D is [in, out].
  b = read(f"{p}attn.c_attn.bias")  # [3d]
  qw, kw, vw = np.split(w, 3, axis=1)
  qb, kb, vb = np.split(b, 3)
  attn = {"q_kernel": qw.reshape(d, h, dh), "k_kernel": kw.reshape(d, h, dh),
          "v_kernel": vw.reshape(d, h, dh), "q_bias": qb.reshape(h, dh),
          "k_bias": kb.reshape(h, dh), "v_bias": vb.reshape(h, dh),
          "o_kernel": read(f"{p}attn.c_proj.weight").reshape(h, dh, d),
          "o_bias": read(f"{p}attn.c_proj.bias")}
  mlp = {"fc_kernel": read(f"{p}mlp.c_fc.weight"), "fc_bias": read(f"{p}mlp.c_fc.bias"),
         "proj_kernel": read(f"{p}mlp.c_proj.weight"), "proj_bias": read(f"{p}mlp.c_proj.bias")}
  return {"attn": jax.tree.map(np.ascontiguousarray, attn), "mlp": mlp,
          "attn_norm": {"scale": read(f"{p}ln_1.weight"), "bias": read(f"{p}ln_1.bias")},
          "mlp_norm": {"scale": read(f"{p}ln_2.weight"), "bias": read(f"{p}ln_2.bias")}}


def expected_shapes(cfg: ModelConfig, head: str) -> dict[str, tuple[int, ...]]:
  """{"layers/attn/q_kernel": shape, ...} as DecoderLM(cfg, head) declares, without init."""
  import flax.linen as nn  # Local: the numpy conversions above need no flax.
  from instructjax.models import DecoderLM
  from instructjax.training.state import dummy_inputs
  shapes = jax.eval_shape(lambda: DecoderLM(cfg, head).init(jax.random.key(0), *dummy_inputs()))
  flat = traverse_util.flatten_dict(nn.meta.unbox(shapes["params"]), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _check_shapes(cfg: ModelConfig, head: str, params: Params) -> None:
  want = expected_shapes(cfg, head)
  got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  if set(want) != set(got):
    raise HFConversionError(
        f"converted parameters do not match DecoderLM({cfg.family}, head={head!r}): missing "
        f"{sorted(set(want) - set(got))}, unexpected {sorted(set(got) - set(want))}")
  bad = [(k, got[k], want[k]) for k in sorted(want) if got[k] != want[k]]
  if bad:
    raise HFConversionError(f"tensor shapes do not match the config (name, got, want): {bad[:4]}")


# ----------------------------------------------------------------------------- instructjax -> HF


def params_to_hf(cfg: ModelConfig, head: str, params: Params) -> dict[str, np.ndarray]:
  """HF state dict (numpy, param dtype kept) of CausalLM / ForSequenceClassification.

  Tied output embeddings are not written (as `save_pretrained` does); the score bias is not
  written either (HF's score has none; the caller decides what to do with it).
  """
  params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  _check_shapes(cfg, head, params)
  pre = "transformer." if cfg.family == "gpt2" else "model."
  out: dict[str, np.ndarray] = {}
  lay = params["layers"]
  for i in range(cfg.n_layers):
    layer = jax.tree.map(lambda x: x[i], lay)
    if cfg.family == "gpt2":
      out.update(_gpt2_layer_to_hf(layer, f"{pre}h.{i}.", cfg))
    else:
      out.update(_llama_layer_to_hf(layer, f"{pre}layers.{i}.", cfg))
  if cfg.family == "gpt2":
    out[f"{pre}wte.weight"] = params["embed"]
    out[f"{pre}wpe.weight"] = params["pos_embed"]
    out[f"{pre}ln_f.weight"] = params["final_norm"]["scale"]
    out[f"{pre}ln_f.bias"] = params["final_norm"]["bias"]
  else:
    out[f"{pre}embed_tokens.weight"] = params["embed"]
    out[f"{pre}norm.weight"] = params["final_norm"]["scale"]
  if head == "scalar":
    out["score.weight"] = params["score_kernel"].T
  elif not cfg.tie_embeddings:
    out["lm_head.weight"] = params["lm_head"].T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _llama_layer_to_hf(layer: Params, p: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
  a, m = layer["attn"], layer["mlp"]
  d = cfg.d_model
  out = {f"{p}self_attn.{k}_proj.weight": a[f"{k}_kernel"].reshape(d, -1).T for k in "qkv"}
  out[f"{p}self_attn.o_proj.weight"] = a["o_kernel"].reshape(-1, d).T
  if cfg.family == "qwen2":
    out.update({f"{p}self_attn.{k}_proj.bias": a[f"{k}_bias"].reshape(-1) for k in "qkv"})
  out.update({f"{p}mlp.{k}_proj.weight": m[f"{k}_kernel"].T for k in ("gate", "up", "down")})
  out[f"{p}input_layernorm.weight"] = layer["attn_norm"]["scale"]
  out[f"{p}post_attention_layernorm.weight"] = layer["mlp_norm"]["scale"]
  return out


def _gpt2_layer_to_hf(layer: Params, p: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
  a, m = layer["attn"], layer["mlp"]
  d = cfg.d_model
  return {
      f"{p}attn.c_attn.weight": np.concatenate([a[f"{k}_kernel"].reshape(d, d) for k in "qkv"], 1),
      f"{p}attn.c_attn.bias": np.concatenate([a[f"{k}_bias"].reshape(d) for k in "qkv"]),
      f"{p}attn.c_proj.weight": a["o_kernel"].reshape(d, d),
      f"{p}attn.c_proj.bias": a["o_bias"],
      f"{p}mlp.c_fc.weight": m["fc_kernel"], f"{p}mlp.c_fc.bias": m["fc_bias"],
      f"{p}mlp.c_proj.weight": m["proj_kernel"], f"{p}mlp.c_proj.bias": m["proj_bias"],
      f"{p}ln_1.weight": layer["attn_norm"]["scale"], f"{p}ln_1.bias": layer["attn_norm"]["bias"],
      f"{p}ln_2.weight": layer["mlp_norm"]["scale"], f"{p}ln_2.bias": layer["mlp_norm"]["bias"],
  }


# ----------------------------------------------------------------------------- vocabulary


def grow_vocab(cfg: ModelConfig, params: Params, vocab_size: int) -> tuple[ModelConfig, Params]:
  """Appends embedding rows (and lm_head columns) up to `vocab_size`, for added tokens (PAD).

  New rows are the mean of the existing ones (what transformers' resize_token_embeddings does):
  a zero row would give a tied model a logit of 0 for the new token, far above typical logits,
  while the mean embedding scores like an average token.
  """
  extra = vocab_size - cfg.vocab_size
  if extra < 0:
    raise ValueError(f"cannot shrink the vocabulary from {cfg.vocab_size} to {vocab_size}")
  if extra == 0:
    return cfg, params
  params = dict(params)

  def grow(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.asarray(jax.device_get(x))
    mean = x.astype(np.float32).mean(axis=axis, keepdims=True).astype(x.dtype)
    return np.concatenate([x, np.repeat(mean, extra, axis=axis)], axis=axis)

  params["embed"] = grow(params["embed"], 0)
  if "lm_head" in params:
    params["lm_head"] = grow(params["lm_head"], 1)
  return cfg.replace(vocab_size=vocab_size), params


def to_numpy(params: Mapping[str, Any]) -> Params:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), dict(params))
