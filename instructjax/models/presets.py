"""Named model sizes. `get_preset(name)` returns a ModelConfig; configs override fields on top."""
from __future__ import annotations

from instructjax.config import ConfigError
from instructjax.models.config import ModelConfig

_PRESETS: dict[str, dict] = {
    # Unit tests: compiles in about a second.
    "test": dict(family="llama", vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                 d_ff=64, max_seq_len=64),
    # InstructWorld on a 2-core CPU (vocab set from the tokenizer by the stage configs).
    # Layers unrolled: at 4 layers that compiles as fast as the scan, and the CPU train steps
    # run faster without the scan's stacked residuals (README "Performance").
    "tiny": dict(family="llama", vocab_size=74, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                 d_ff=384, max_seq_len=128, scan_layers=False),
    "tiny-gpt2": dict(family="gpt2", vocab_size=74, d_model=128, n_layers=4, n_heads=4,
                      n_kv_heads=4, d_ff=512, max_seq_len=128, tie_embeddings=True),
    "gpt2-124m": dict(family="gpt2", vocab_size=50257, d_model=768, n_layers=12, n_heads=12,
                      n_kv_heads=12, d_ff=3072, max_seq_len=1024, tie_embeddings=True),
    # Llama-3.2-1B shape.
    "llama-1b": dict(family="llama", vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
                     n_kv_heads=8, d_ff=8192, max_seq_len=8192, norm_eps=1e-5,
                     rope_theta=500000.0, rope_scaling_factor=32.0, rope_low_freq_factor=1.0,
                     rope_high_freq_factor=4.0, rope_original_max_len=8192, tie_embeddings=True,
                     param_dtype="float32", dtype="bfloat16"),
    # Llama-3.1-8B shape.
    "llama-8b": dict(family="llama", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
                     n_kv_heads=8, d_ff=14336, max_seq_len=8192, norm_eps=1e-5,
                     rope_theta=500000.0, rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                     rope_high_freq_factor=4.0, rope_original_max_len=8192, tie_embeddings=False,
                     param_dtype="float32", dtype="bfloat16", remat="full"),
    # Qwen2-0.5B shape (q/k/v biases).
    "qwen2-0.5b": dict(family="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
                       n_kv_heads=2, d_ff=4864, max_seq_len=4096, norm_eps=1e-6,
                       rope_theta=1000000.0, tie_embeddings=True, dtype="bfloat16"),
}

PRESET_NAMES = tuple(_PRESETS)


def get_preset(name: str, **overrides) -> ModelConfig:
  if name not in _PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(PRESET_NAMES)}")
  return ModelConfig(**{**_PRESETS[name], **overrides}).validate()
