"""import -> export -> import is exact; sharded checkpoints; bf16; CharTokenizer checkpoints."""
import os

import jax
import numpy as np
import pytest
import transformers
from flax import traverse_util
from hf_testlib import CASES, hf_forward, left_padded_batch, ours_forward, random_params

import instructjax
from instructjax.hf import export_hf, import_hf
from instructjax.hf.safetensors_io import INDEX_FILE, SINGLE_FILE
from instructjax.models import ModelConfig
from instructjax.tokenizer import CharTokenizer


def assert_bitwise_equal(a, b):
  fa = traverse_util.flatten_dict(jax.device_get(a), sep="/")
  fb = traverse_util.flatten_dict(jax.device_get(b), sep="/")
  assert sorted(fa) == sorted(fb)
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.dtype == y.dtype and x.shape == y.shape, k
    assert x.tobytes() == y.tobytes(), k


@pytest.mark.parametrize("case", CASES)
def test_import_export_import_is_exact(case, hf_dirs, tmp_path):
  first = import_hf(hf_dirs[case])
  out = str(tmp_path / "again")
  export_hf(out, first.config, first.params, tokenizer=first.tokenizer)
  second = import_hf(out)
  assert second.config == first.config and second.head == first.head
  assert_bitwise_equal(first.params, second.params)
  tok1, tok2 = first.tokenizer, second.tokenizer
  assert (tok2.vocab_size, tok2.pad_id, tok2.eos_id, tok2.bos_id) == (
      tok1.vocab_size, tok1.pad_id, tok1.eos_id, tok1.bos_id)
  assert not tok2.added_pad  # The PAD was saved with the tokenizer: nothing added twice.
  # A second export writes byte-identical weights.
  export_hf(str(tmp_path / "third"), second.config, second.params, tokenizer=second.tokenizer)
  with open(os.path.join(out, SINGLE_FILE), "rb") as f1, \
       open(str(tmp_path / "third" / SINGLE_FILE), "rb") as f2:
    assert f1.read() == f2.read()
  print(f"ROUNDTRIP {case}: import -> export -> import bitwise equal "
        f"({len(jax.tree.leaves(first.params))} arrays)")


def test_sharded_checkpoints_both_ways(hf_dirs, tmp_path):
  """HF-written shards import like the single file; our shards load in transformers."""
  single = import_hf(hf_dirs["qwen2"])
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["qwen2"])
  hf_sharded = str(tmp_path / "hf_sharded")
  model.save_pretrained(hf_sharded, max_shard_size="40KB")
  assert os.path.exists(os.path.join(hf_sharded, INDEX_FILE))
  assert len([f for f in os.listdir(hf_sharded) if f.endswith(".safetensors")]) > 1
  sharded = import_hf(hf_sharded)
  assert sharded.tokenizer is None  # That directory has no tokenizer files.
  assert sharded.config == single.config  # qwen2 has spare rows: adding PAD grew nothing.
  assert_bitwise_equal(single.params, sharded.params)

  ours = str(tmp_path / "ours_sharded")
  export_hf(ours, single.config, single.params, tokenizer=single.tokenizer,
            max_shard_bytes=30_000)
  assert os.path.exists(os.path.join(ours, INDEX_FILE))
  assert not os.path.exists(os.path.join(ours, SINGLE_FILE))
  assert_bitwise_equal(single.params, import_hf(ours).params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(ours).eval()
  tokens, mask = left_padded_batch(single.config.vocab_size, single.tokenizer.pad_id)
  np.testing.assert_allclose(ours_forward(single.config, single.params, tokens, mask)[mask == 1],
                             hf_forward(reloaded, tokens, mask)[mask == 1], atol=1e-4)


def test_bfloat16_params_round_trip(hf_dirs, tmp_path):
  first = import_hf(hf_dirs["llama"], param_dtype="bfloat16", dtype="bfloat16")
  assert first.params["embed"].dtype == jax.numpy.bfloat16
  export_hf(str(tmp_path / "bf16"), first.config, first.params, tokenizer=first.tokenizer)
  second = import_hf(str(tmp_path / "bf16"), param_dtype="bfloat16", dtype="bfloat16")
  assert_bitwise_equal(first.params, second.params)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"))
  assert model.dtype == __import__("torch").bfloat16


def test_char_tokenizer_model_exports_with_hf_tokenizer_files(tmp_path):
  """InstructWorld models (CharTokenizer) export with an equivalent HF tokenizer.json."""
  tok = CharTokenizer()
  cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                    n_kv_heads=2, d_ff=48, max_seq_len=64)
  lm = instructjax.LM(cfg, random_params(cfg, seed=3), tok)
  out = str(tmp_path / "world")
  lm.to_hf(out)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
  text = "Hello World: 12 (ok)!\n bye?"
  assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
  assert hf_tok.decode([tok.bos_id] + tok.encode(text) + [tok.eos_id],
                       skip_special_tokens=True) == text
  assert (hf_tok.pad_token_id, hf_tok.bos_token_id, hf_tok.eos_token_id) == (0, 1, 2)
  back = instructjax.load(out)
  assert back.tokenizer == tok  # instructjax reads its own tokenizer file first.
  assert_bitwise_equal(lm.params, back.params)
  ids = np.asarray([tok.encode(text)])
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  np.testing.assert_allclose(ours_forward(cfg, lm.params, ids), hf_forward(model, ids), atol=1e-4)
