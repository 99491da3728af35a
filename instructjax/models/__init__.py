"""Decoder-only transformer language models (GPT-2, Llama, Qwen2) with LM or scalar heads."""
from instructjax.models.config import ModelConfig
from instructjax.models.kv_cache import KVCache
from instructjax.models.presets import PRESET_NAMES, get_preset
from instructjax.models.transformer import (DecoderLM, gather_at, last_token_index,
                                            lm_head_weight, positions_from_mask)

__all__ = ["ModelConfig", "KVCache", "PRESET_NAMES", "get_preset", "DecoderLM",
           "gather_at", "last_token_index", "lm_head_weight", "positions_from_mask"]
