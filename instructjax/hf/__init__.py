"""Hugging Face interop: import/export gpt2, llama and qwen2 checkpoints as safetensors only."""
from instructjax.hf.config import (ARCHITECTURES, SCORE_BIAS_KEY, HFConversionError, HFModelSpec,
                                   config_to_hf, spec_from_hf)
from instructjax.hf.convert import (HFImport, export_hf, import_hf, is_hf_dir, read_hf_config,
                                    save_tokenizer_for_hf)
from instructjax.hf.safetensors_io import SafetensorsReader, refuse_pickles, write_safetensors
from instructjax.hf.weights import grow_vocab, hf_to_params, params_to_hf

__all__ = [
    "ARCHITECTURES", "SCORE_BIAS_KEY", "HFConversionError", "HFImport", "HFModelSpec",
    "SafetensorsReader", "config_to_hf", "export_hf", "grow_vocab", "hf_to_params", "import_hf",
    "is_hf_dir", "params_to_hf", "read_hf_config", "refuse_pickles", "save_tokenizer_for_hf",
    "spec_from_hf", "write_safetensors",
]
