"""Hugging Face interop: import/export gpt2, llama and qwen2 checkpoints as safetensors only.

  imp = import_hf("path/to/hf_dir")            # HFImport(config, head, params, tokenizer, spec)
  export_hf("out/", config, params, head="lm", tokenizer=tok)

Policies (each documented where it is implemented):
  * weights are read with the safetensors numpy API only; directories with only pickle weights
    (.bin/.pt/...) are refused with a conversion recipe (safetensors_io); trust_remote_code is
    never set and configs with `auto_map` are refused unless ignore_auto_map=True (config);
  * refused: rope types other than default/llama3, partial rotary, sliding windows that some
    layer uses, llama attention/MLP biases, non-tanh GELU, untied GPT-2, num_labels != 1,
    tensors the conversion would not use (strict=True) (config, weights);
  * tokenizers without a PAD distinct from EOS get `<|pad|>`; the embedding grows to cover it
    with mean rows (instructjax.hf.tokenizer, weights.grow_vocab);
  * head="scalar" <-> *ForSequenceClassification(num_labels=1); a non-zero score_bias, which
    HF's head cannot hold, is recorded in config.json on export (score_bias="store", the
    default; "error" refuses it) and restored on import (convert).
"""
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
