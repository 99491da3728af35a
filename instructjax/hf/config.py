"""Hugging Face `config.json` <-> ModelConfig, refusing features the decoder does not implement.

Reads both config layouts: transformers 4 (`rope_theta` at the top, `rope_scaling` dict with
`type` or `rope_type`) and transformers 5 (`rope_parameters` with `rope_type` and `rope_theta`).
Missing keys take the HF class defaults, since `save_pretrained` may omit values equal to them.
Writes the transformers 4 layout, which transformers 5 still reads (and converts on load).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from instructjax.models.config import ModelConfig


class HFConversionError(ValueError):
  """An HF checkpoint or config cannot be converted faithfully; the message says why."""


# HF architectures per (family, head).
ARCHITECTURES = {
    ("gpt2", "lm"): "GPT2LMHeadModel",
    ("gpt2", "scalar"): "GPT2ForSequenceClassification",
    ("llama", "lm"): "LlamaForCausalLM",
    ("llama", "scalar"): "LlamaForSequenceClassification",
    ("qwen2", "lm"): "Qwen2ForCausalLM",
    ("qwen2", "scalar"): "Qwen2ForSequenceClassification",
}

# Class defaults of transformers' GPT2Config / LlamaConfig / Qwen2Config for the keys read here.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                 tie_word_embeddings=True, scale_attn_weights=True,
                 scale_attn_by_inverse_layer_idx=False, add_cross_attention=False),
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None,
                  max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  rope_theta=10000.0, hidden_act="silu", attention_bias=False, mlp_bias=False),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None,
                  max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  rope_theta=10000.0, hidden_act="silu", use_sliding_window=False,
                  sliding_window=None, max_window_layers=28),
}

# Key under which a dropped reward-model score bias is recorded (see export's `score_bias`).
SCORE_BIAS_KEY = "instructjax_score_bias"


@dataclasses.dataclass(frozen=True)
class HFModelSpec:
  """What an HF config describes: the instructjax config and head, plus token ids it names."""
  config: ModelConfig
  head: str  # "lm" or "scalar"
  pad_token_id: Optional[int]
  bos_token_id: Optional[int]
  eos_token_id: Optional[int]
  score_bias: float = 0.0  # Recorded by an instructjax export with score_bias="store".


def stored_dtype(hf: Mapping[str, Any]) -> str:
  """The dtype the checkpoint's weights are stored in (`dtype` in transformers 5 configs,
  `torch_dtype` in 4), as a ModelConfig dtype; "float32" when it names none or another."""
  name = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
  return name if name in ("float32", "bfloat16", "float16") else "float32"


def _first_id(value) -> Optional[int]:
  """Token ids may be an int, a list (several EOS ids) or null; keep the first."""
  if isinstance(value, (list, tuple)):
    return int(value[0]) if value else None
  return None if value is None else int(value)


def head_from_hf(hf: Mapping[str, Any], where: str) -> str:
  """"scalar" for *ForSequenceClassification (num_labels must be 1), else "lm"."""
  archs = hf.get("architectures") or []
  if any(a.endswith("ForSequenceClassification") for a in archs):
    num_labels = hf.get("num_labels", len(hf.get("id2label") or {0: 0}))
    if num_labels != 1:
      raise HFConversionError(
          f"{where}: sequence classification with num_labels={num_labels}; only num_labels=1 "
          "(a scalar reward/value head) maps onto DecoderLM(head='scalar')")
    return "scalar"
  unsupported = [a for a in archs if not a.endswith(("ForCausalLM", "LMHeadModel", "Model"))]
  if unsupported:
    raise HFConversionError(f"{where}: architecture {unsupported} is not supported; expected a "
                            "causal LM, a base model or a sequence classifier")
  return "lm"


def _rope_fields(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
  """ModelConfig rope fields from either config layout; only default and llama3 rope."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if any(isinstance(v, Mapping) for v in params.values()):
    raise HFConversionError(f"{where}: per-layer-type rope parameters {sorted(params)} are not "
                            "supported")
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise HFConversionError(f"{where}: partial_rotary_factor={partial} is not supported")
  fields: dict[str, Any] = dict(rope_theta=float(theta))
  if rope_type == "default":
    return fields
  if rope_type != "llama3":
    raise HFConversionError(
        f"{where}: rope type {rope_type!r} is not supported (only 'default' and 'llama3'); "
        "converting it would silently change the positional encoding")
  missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor",
                         "original_max_position_embeddings") if k not in params]
  if missing:
    raise HFConversionError(f"{where}: llama3 rope scaling lacks {missing}")
  fields.update(rope_scaling_factor=float(params["factor"]),
                rope_low_freq_factor=float(params["low_freq_factor"]),
                rope_high_freq_factor=float(params["high_freq_factor"]),
                rope_original_max_len=int(params["original_max_position_embeddings"]))
  return fields


def _check_sliding_window(hf: Mapping[str, Any], n_layers: int, max_len: int, where: str):
  """Qwen2's sliding window is refused when some layer would actually use it."""
  layer_types = hf.get("layer_types")
  window = hf.get("sliding_window")
  if layer_types is not None:
    sliding = [i for i, t in enumerate(layer_types) if t != "full_attention"]
  elif hf.get("use_sliding_window") and window is not None:
    first = hf.get("max_window_layers", _DEFAULTS["qwen2"]["max_window_layers"])
    sliding = list(range(first, n_layers))
  else:
    sliding = []
  # A window as long as the context never masks anything: harmless.
  if sliding and not (window is not None and window >= max_len):
    raise HFConversionError(
        f"{where}: sliding-window attention (window {window}) is used by layers {sliding}; "
        "instructjax attends over the full context, so logits would differ")


def spec_from_hf(hf: Mapping[str, Any], where: str = "config.json", *,
                 ignore_auto_map: bool = False, dtype: str = "float32",
                 param_dtype: str = "float32") -> HFModelSpec:
  """Translates an HF config dict (gpt2/llama/qwen2) into a validated ModelConfig and head.

  Args:
    hf: the parsed config.json.
    where: named in error messages.
    ignore_auto_map: configs with `auto_map` point at remote code, which is never run; they are
      refused unless this says to convert the weights as the built-in architecture.
    dtype, param_dtype: compute and parameter dtypes of the instructjax model.
  """
  model_type = hf.get("model_type")
  if model_type not in _DEFAULTS:
    raise HFConversionError(f"{where}: model_type {model_type!r} is not supported; "
                            f"supported: {sorted(_DEFAULTS)}")
  if hf.get("auto_map") and not ignore_auto_map:
    raise HFConversionError(
        f"{where}: has auto_map {sorted(hf['auto_map'])}, i.e. custom remote code, which "
        "instructjax never runs (trust_remote_code is never set). Pass ignore_auto_map=True to "
        f"convert it as the built-in {model_type!r} architecture if you know it is one.")
  d = {**_DEFAULTS[model_type], **hf}
  head = head_from_hf(hf, where)
  if model_type == "gpt2":
    if d["activation_function"] not in ("gelu_new", "gelu_pytorch_tanh"):
      raise HFConversionError(f"{where}: activation_function {d['activation_function']!r} is "
                              "not supported (only the tanh GELU: gelu_new, gelu_pytorch_tanh)")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
      if bool(d[key]) != want:
        raise HFConversionError(f"{where}: {key}={d[key]} is not supported")
    if not d["tie_word_embeddings"]:
      raise HFConversionError(f"{where}: untied GPT-2 embeddings are not supported")
    fields = dict(family="gpt2", vocab_size=d["vocab_size"], d_model=d["n_embd"],
                  n_layers=d["n_layer"], n_heads=d["n_head"], n_kv_heads=d["n_head"],
                  d_ff=d["n_inner"] or 4 * d["n_embd"], max_seq_len=d["n_positions"],
                  norm_eps=d["layer_norm_epsilon"], tie_embeddings=True)
  else:
    if d["hidden_act"] != "silu":
      raise HFConversionError(f"{where}: hidden_act {d['hidden_act']!r} is not supported")
    if model_type == "llama" and (d["attention_bias"] or d["mlp_bias"]):
      raise HFConversionError(f"{where}: llama with attention_bias/mlp_bias is not supported")
    heads = d["num_attention_heads"]
    head_dim = d.get("head_dim") or d["hidden_size"] // heads
    fields = dict(family=model_type, vocab_size=d["vocab_size"], d_model=d["hidden_size"],
                  n_layers=d["num_hidden_layers"], n_heads=heads,
                  n_kv_heads=d["num_key_value_heads"] or heads,
                  # 0 means "d_model // n_heads"; keep configs minimal when that is the case.
                  head_dim=0 if head_dim * heads == d["hidden_size"] else head_dim,
                  d_ff=d["intermediate_size"], max_seq_len=d["max_position_embeddings"],
                  norm_eps=d["rms_norm_eps"], tie_embeddings=bool(d["tie_word_embeddings"]),
                  **_rope_fields(d, where))
    if model_type == "qwen2":
      _check_sliding_window(d, fields["n_layers"], fields["max_seq_len"], where)
  cfg = ModelConfig(**fields, dtype=dtype, param_dtype=param_dtype)
  try:
    cfg.validate(prefix="hf")
  except ValueError as e:
    raise HFConversionError(f"{where}: {e}") from e
  return HFModelSpec(config=cfg, head=head, pad_token_id=_first_id(hf.get("pad_token_id")),
                     bos_token_id=_first_id(hf.get("bos_token_id")),
                     eos_token_id=_first_id(hf.get("eos_token_id")),
                     score_bias=float(hf.get(SCORE_BIAS_KEY, 0.0)))


def config_to_hf(cfg: ModelConfig, head: str = "lm", *, pad_token_id: Optional[int] = None,
                 bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None,
                 score_bias: Optional[float] = None) -> dict[str, Any]:
  """The HF config.json dict of an instructjax model (transformers 4 layout, read by 5 too)."""
  cfg.validate()
  arch = ARCHITECTURES[(cfg.family, head)]
  # Weights are written in param_dtype; HF reads `torch_dtype` (v4) or `dtype` (v5).
  out: dict[str, Any] = dict(architectures=[arch], model_type=cfg.family,
                             vocab_size=cfg.vocab_size, torch_dtype=cfg.param_dtype,
                             tie_word_embeddings=cfg.tie_embeddings, use_cache=True,
                             pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                             eos_token_id=eos_token_id)
  if cfg.family == "gpt2":
    if cfg.resolved_head_dim * cfg.n_heads != cfg.d_model:
      raise HFConversionError("gpt2 export needs head_dim == d_model // n_heads")
    out.update(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
               n_positions=cfg.max_seq_len, n_ctx=cfg.max_seq_len,
               layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new",
               resid_pdrop=cfg.dropout_rate, embd_pdrop=cfg.dropout_rate,
               attn_pdrop=cfg.dropout_rate, scale_attn_weights=True,
               scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
  else:
    out.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
               num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
               head_dim=cfg.resolved_head_dim, intermediate_size=cfg.d_ff,
               max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
               hidden_act="silu", attention_dropout=cfg.dropout_rate,
               initializer_range=cfg.init_std, rope_theta=cfg.rope_theta, rope_scaling=None)
    if cfg.rope_scaling_factor:
      out["rope_scaling"] = dict(rope_type="llama3", factor=cfg.rope_scaling_factor,
                                 low_freq_factor=cfg.rope_low_freq_factor,
                                 high_freq_factor=cfg.rope_high_freq_factor,
                                 original_max_position_embeddings=cfg.rope_original_max_len)
    if cfg.family == "llama":
      out.update(attention_bias=False, mlp_bias=False)
    else:
      out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
  if head == "scalar":
    out.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    if score_bias is not None:
      out[SCORE_BIAS_KEY] = float(score_bias)
  return out
