"""Import a local HF model directory into instructjax parameters, and export one back.

import: config.json -> ModelConfig (refusing what the decoder cannot reproduce), safetensors
  -> params (numpy), tokenizer files -> HFTokenizer (adding a PAD if needed and growing the
  embedding to cover it).
export: config.json, generation_config.json, model.safetensors (or shards + index) and the
  tokenizer, loadable by transformers' Auto classes with trust_remote_code=False.

Reward/value models (head="scalar") map to *ForSequenceClassification with num_labels=1. HF's
`score` layer has no bias, so a non-zero instructjax `score_bias` (every reward and value model
the stages write has one: the reward normalisation folded into the head) cannot be expressed in
HF weights. Export policy (`score_bias=`):
  "store" (default): write the weights without it and record it in config.json as
    `instructjax_score_bias`. transformers ignores that key, so HF scores are the instructjax
    scores minus the bias (rankings and pairwise losses are unchanged; add
    `model.config.instructjax_score_bias` to get the scores PPO was rewarded with); an
    instructjax import restores it, so `instructjax.load(export)` scores exactly as before.
  "error": refuse a non-zero bias, naming the value; a zero bias exports silently.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np

from instructjax.hf.config import HFConversionError, HFModelSpec, config_to_hf, spec_from_hf
from instructjax.hf.safetensors_io import SafetensorsReader, write_safetensors
from instructjax.hf.weights import Params, grow_vocab, hf_to_params, params_to_hf, to_numpy
from instructjax.models.config import ModelConfig

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SCORE_BIAS_POLICIES = ("store", "error")


@dataclasses.dataclass
class HFImport:
  """An imported HF checkpoint: config, head, numpy params and (if present) its tokenizer."""
  config: ModelConfig
  head: str
  params: Params
  tokenizer: Any  # instructjax Tokenizer or None when the directory has no tokenizer files.
  spec: HFModelSpec  # As read from config.json (before any vocabulary growth).


def is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_hf_config(path: str) -> dict[str, Any]:
  cfg_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a Hugging Face model directory")
  with open(cfg_path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise HFConversionError(f"{cfg_path}: invalid JSON: {e}") from e


def _has_tokenizer(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f)) for f in (
      "tokenizer.json", "tokenizer_config.json", "instructjax_tokenizer.json"))


def import_hf(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
              load_tokenizer: bool = True, ignore_auto_map: bool = False,
              strict: bool = True) -> HFImport:
  """Reads a local HF directory (gpt2 / llama / qwen2; CausalLM or SequenceClassification).

  Args:
    path: directory with config.json and model.safetensors (or sharded safetensors + index).
    dtype, param_dtype: compute and parameter dtypes of the instructjax model (weights are cast).
    load_tokenizer: load the tokenizer files of `path` if present. A PAD is added when the
      tokenizer lacks one (see instructjax.hf.tokenizer) and the embedding grown to cover it.
    ignore_auto_map: convert configs with `auto_map` (remote code) as the built-in architecture.
    strict: refuse checkpoints with tensors the conversion would not use.
  """
  hf = read_hf_config(path)
  where = os.path.join(path, CONFIG_FILE)
  spec = spec_from_hf(hf, where, ignore_auto_map=ignore_auto_map, dtype=dtype,
                      param_dtype=param_dtype)
  reader = SafetensorsReader(path)
  head = spec.head
  if not hf.get("architectures") and "score.weight" in reader:
    head = "scalar"  # No architecture named: the weights decide.
  try:
    params, _ = hf_to_params(spec.config, head, reader.get, reader.keys(), strict=strict)
  except HFConversionError as e:
    raise HFConversionError(f"{path}: {e}") from e
  if head == "scalar" and spec.score_bias:
    params["score_bias"] = np.asarray([spec.score_bias], params["score_bias"].dtype)
  cfg = spec.config
  tokenizer = None
  if load_tokenizer and _has_tokenizer(path):
    from instructjax.tokenizer import load_tokenizer as load_tok  # Avoids an import cycle.
    tokenizer = load_tok(path)
    if tokenizer.vocab_size > cfg.vocab_size:
      cfg, params = grow_vocab(cfg, params, tokenizer.vocab_size)
  return HFImport(config=cfg, head=head, params=params, tokenizer=tokenizer, spec=spec)


def export_hf(path: str, config: ModelConfig, params: Params, *, head: str = "lm",
              tokenizer: Any = None, pad_token_id: Optional[int] = None,
              bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None,
              score_bias: str = "store", max_shard_bytes: Optional[int] = None) -> None:
  """Writes an HF directory for `DecoderLM(config, head)` with `params`.

  Args:
    tokenizer: saved beside the weights (HF tokenizer files; an instructjax CharTokenizer
      is saved natively and as an equivalent HF tokenizer.json). Its pad/bos/eos ids go into
      config.json and generation_config.json unless given explicitly.
    score_bias: policy for a non-zero score bias of a scalar head (see the module docstring).
    max_shard_bytes: shard the weights (with model.safetensors.index.json) above this size.
  """
  if score_bias not in SCORE_BIAS_POLICIES:
    raise ValueError(f"score_bias must be one of {SCORE_BIAS_POLICIES}, got {score_bias!r}")
  if head == "scalar" and config.score_logprob:
    raise HFConversionError(
        f"this reward model's score adds score_logprob_weight times its own LM head's "
        f"log-likelihood of the response (model.score_logprob={config.score_logprob}): an HF "
        "*ForSequenceClassification head reads one linear score at the last token and cannot "
        "express it; keep it as an instructjax model directory (LM.save / instructjax.load)")
  params = to_numpy(params)
  tensors = params_to_hf(config, head, params)
  if tokenizer is not None:
    pad_token_id = tokenizer.pad_id if pad_token_id is None else pad_token_id
    bos_token_id = tokenizer.bos_id if bos_token_id is None else bos_token_id
    eos_token_id = tokenizer.eos_id if eos_token_id is None else eos_token_id
    if tokenizer.vocab_size > config.vocab_size:
      raise HFConversionError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{config.vocab_size} embeddings")
  bias_to_record = None
  if head == "scalar":
    if pad_token_id is None:
      # HF finds the scored (last non-pad) token through pad_token_id.
      raise HFConversionError("exporting a scalar head needs pad_token_id (or a tokenizer): "
                              "transformers scores the last token that is not PAD")
    bias = float(np.asarray(params["score_bias"]).reshape(-1)[0])
    if bias != 0.0:
      if score_bias == "error":
        raise HFConversionError(
            f"score_bias is {bias!r} but HF's sequence-classification score has no bias, so HF "
            "scores would be shifted by it. Zero it, or export with score_bias='store' (the "
            "default: HF scores = instructjax scores - bias, the bias recorded in config.json)")
      bias_to_record = bias
  hf_config = config_to_hf(config, head, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                           eos_token_id=eos_token_id, score_bias=bias_to_record)

  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  if head == "lm":
    gen = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
           "pad_token_id": pad_token_id}
    with open(os.path.join(path, GENERATION_CONFIG_FILE), "w") as f:
      json.dump({k: v for k, v in gen.items() if v is not None}, f, indent=2, sort_keys=True)
  write_safetensors(path, tensors, max_shard_bytes=max_shard_bytes)
  if tokenizer is not None:
    save_tokenizer_for_hf(tokenizer, path)


def save_tokenizer_for_hf(tokenizer: Any, path: str) -> None:
  """Saves `tokenizer` natively; a CharTokenizer also gets HF files so transformers loads it."""
  tokenizer.save(path)
  from instructjax.tokenizer import CharTokenizer
  if isinstance(tokenizer, CharTokenizer):
    from instructjax.hf.tokenizer import char_tokenizer_to_hf
    char_tokenizer_to_hf(tokenizer).save_pretrained(path)
