"""What is refused, and how: pickles, remote code, features the decoder does not implement."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

import instructjax
from instructjax.hf import HFConversionError, import_hf, spec_from_hf

LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=64,
             hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)


class _Sentinel:
  """Unpickling this creates a file: proof that nothing was unpickled if it never appears."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_pickle_only_directory_is_refused_with_conversion_recipe(tmp_path):
  sentinel = str(tmp_path / "UNPICKLED")
  (tmp_path / "config.json").write_text(json.dumps(LLAMA))
  (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Sentinel(sentinel)))
  with pytest.raises(HFConversionError) as err:
    instructjax.from_hf(str(tmp_path))
  msg = str(err.value)
  assert "pytorch_model.bin" in msg and "never unpickles" in msg
  assert "save_pretrained" in msg and "safe_serialization=True" in msg
  assert not os.path.exists(sentinel)
  print("REFUSAL .bin:", msg.splitlines()[0])


def test_no_weights_at_all(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(LLAMA))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    import_hf(str(tmp_path))


def test_auto_map_is_refused_unless_explicitly_ignored():
  cfg = {**LLAMA, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}
  with pytest.raises(HFConversionError, match="remote code"):
    spec_from_hf(cfg)
  assert spec_from_hf(cfg, ignore_auto_map=True).config.family == "llama"


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 2.0}, {"type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}])
def test_unsupported_rope_types(rope):
  with pytest.raises(HFConversionError, match="rope type"):
    spec_from_hf({**LLAMA, "rope_scaling": rope})
  with pytest.raises(HFConversionError, match="rope type"):
    spec_from_hf({**LLAMA, "rope_parameters": {**rope, "rope_theta": 1e4}})


def test_both_rope_layouts_give_the_same_config():
  llama3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
  v4 = spec_from_hf({**LLAMA, "rope_theta": 500000.0, "rope_scaling": {"type": "llama3", **llama3}})
  v4b = spec_from_hf({**LLAMA, "rope_theta": 500000.0,
                      "rope_scaling": {"rope_type": "llama3", **llama3}})
  v5 = spec_from_hf({**LLAMA, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
                                                  **llama3}})
  assert v4.config == v4b.config == v5.config
  assert v5.config.rope_theta == 500000.0 and v5.config.rope_scaling_factor == 8.0
  plain = spec_from_hf({**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}})
  assert plain.config.rope_theta == 7.0 and plain.config.rope_scaling_factor == 0.0


def test_qwen2_sliding_window_refused_only_when_used():
  qwen = {**LLAMA, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
  with pytest.raises(HFConversionError, match="sliding-window"):
    spec_from_hf({**qwen, "use_sliding_window": True, "sliding_window": 16,
                  "max_window_layers": 1})
  with pytest.raises(HFConversionError, match="sliding-window"):  # transformers 5 layout
    spec_from_hf({**qwen, "sliding_window": 16,
                  "layer_types": ["full_attention", "sliding_attention"]})
  # Present but unused (the Qwen2 default), or a window covering the whole context: fine.
  spec_from_hf({**qwen, "use_sliding_window": False, "sliding_window": 16})
  spec_from_hf({**qwen, "use_sliding_window": True, "sliding_window": 128, "max_window_layers": 0})
  spec_from_hf({**qwen, "layer_types": ["full_attention"] * 2})


@pytest.mark.parametrize("change,match", [
    ({"model_type": "mistral"}, "model_type"),
    ({"architectures": ["LlamaForSequenceClassification"], "num_labels": 3}, "num_labels=3"),
    ({"architectures": ["LlamaForTokenClassification"]}, "not supported"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "per-layer-type"),
    ({"num_key_value_heads": 3}, "n_kv_heads"),
])
def test_unsupported_configs(change, match):
  with pytest.raises(HFConversionError, match=match):
    spec_from_hf({**LLAMA, **change})


def test_gpt2_variants_refused():
  gpt2 = dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=4, vocab_size=64, n_positions=32)
  spec_from_hf(gpt2)
  for change in ({"activation_function": "relu"}, {"scale_attn_by_inverse_layer_idx": True},
                 {"tie_word_embeddings": False}, {"add_cross_attention": True}):
    with pytest.raises(HFConversionError):
      spec_from_hf({**gpt2, **change})


def test_unexpected_or_missing_tensors(hf_dirs, tmp_path):
  d = str(tmp_path / "extra")
  shutil.copytree(hf_dirs["llama"], d)
  from safetensors.numpy import load_file
  tensors = load_file(os.path.join(d, "model.safetensors"))
  extra = {**tensors, "model.layers.0.self_attn.q_norm.weight": np.ones(16, np.float32)}
  save_file(extra, os.path.join(d, "model.safetensors"))
  with pytest.raises(HFConversionError, match="q_norm"):
    import_hf(d)
  assert import_hf(d, strict=False).config.family == "llama"
  wrong = {**tensors, "model.layers.1.self_attn.k_proj.weight": np.ones((8, 48), np.float32)}
  save_file(wrong, os.path.join(d, "model.safetensors"))
  with pytest.raises(HFConversionError, match="layer 1: tensor shapes"):
    import_hf(d)
  missing = {k: v for k, v in tensors.items() if "layers.2.mlp.up_proj" not in k}
  save_file(missing, os.path.join(d, "model.safetensors"))
  with pytest.raises(HFConversionError, match="layers.2.mlp.up_proj"):
    import_hf(d)


def test_a_reward_model_scoring_its_own_loglikelihood_is_not_exported(tmp_path):
  """model.score_logprob > 0: the score adds a weighted LM log-likelihood, which a
  sequence-classification head cannot hold: one clear error, nothing written; the
  instructjax directory round-trips it exactly."""
  import jax
  from hf_testlib import random_params
  from instructjax.models import get_preset
  from instructjax.tokenizer import CharTokenizer
  tok = CharTokenizer()
  cfg = get_preset("test").replace(vocab_size=tok.vocab_size, score_logprob=0.2)
  rm = instructjax.LM(cfg, random_params(cfg, "scalar"), tok, head="scalar")
  assert "score_logprob_weight" in rm.params and "lm_head" in rm.params
  with pytest.raises(HFConversionError, match=r"score_logprob.*cannot express") as err:
    rm.to_hf(str(tmp_path / "hf"))
  assert len(str(err.value).splitlines()) == 1
  assert not os.path.exists(tmp_path / "hf")
  back = instructjax.load(rm.save(str(tmp_path / "rm")))
  assert back.config == cfg and back.head == "scalar"
  for a, b in zip(jax.tree.leaves(rm.params), jax.tree.leaves(back.params)):
    np.testing.assert_array_equal(a, b)
  prompts, responses = ["sort: 2 1\n", "ab"], ["1 2", "c"]
  np.testing.assert_array_equal(rm.score(prompts, responses), back.score(prompts, responses))
