"""Logit parity with transformers' PyTorch forward, float32, max |diff| <= 1e-4.

Imported: a random HF model saved offline, read by instructjax.from_hf.
Exported: random instructjax parameters written by LM.to_hf, read by AutoModelForCausalLM.
Each both unpadded (no attention mask given to HF) and left padded (attention_mask and
position_ids from the mask given to HF; only real tokens compared).
"""
import jax
import numpy as np
import pytest
import transformers
from hf_testlib import CASES, hf_forward, left_padded_batch, ours_forward, random_params

import instructjax

TOL = 1e-4


def _compare(label: str, ours: np.ndarray, ref: np.ndarray, mask=None) -> float:
  assert ours.shape[:2] == ref.shape[:2]
  valid = np.ones(ours.shape[:2], bool) if mask is None else mask.astype(bool)
  # Logits of tokens instructjax added (PAD) have no HF counterpart.
  diff = float(np.abs(ours[..., :ref.shape[-1]] - ref)[valid].max())
  print(f"PARITY {label}: max|logit diff| = {diff:.3e} (logits up to {np.abs(ref).max():.1f})")
  assert diff <= TOL, label
  return diff


@pytest.mark.parametrize("case", CASES)
def test_imported_model_matches_transformers(case, hf_dirs):
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs[case]).eval()
  lm = instructjax.from_hf(hf_dirs[case])
  assert lm.tokenizer.pad_id != lm.tokenizer.eos_id
  tokens, mask = left_padded_batch(hf_model.config.vocab_size, lm.tokenizer.pad_id)
  if case == "gpt2":
    # The PAD row was appended: the embedding grew by one, keeping every HF row.
    assert lm.config.vocab_size == hf_model.config.vocab_size + 1
  full, _ = left_padded_batch(hf_model.config.vocab_size, lm.tokenizer.pad_id, pads=(0, 0, 0))
  _compare(f"{case} import unpadded", ours_forward(lm.config, lm.params, full),
           hf_forward(hf_model, full))
  _compare(f"{case} import padded", ours_forward(lm.config, lm.params, tokens, mask),
           hf_forward(hf_model, tokens, mask), mask)


def random_lm(hf_dir: str, seed: int = 1) -> instructjax.LM:
  """An instructjax model with fresh random weights (config and tokenizer from `hf_dir`)."""
  base = instructjax.from_hf(hf_dir)
  return instructjax.LM(base.config, random_params(base.config, seed=seed), base.tokenizer)


@pytest.mark.parametrize("case", CASES)
def test_exported_model_matches_transformers(case, hf_dirs, tmp_path):
  lm = random_lm(hf_dirs[case])
  out = str(tmp_path / "export")
  lm.to_hf(out)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert hf_model.config.vocab_size == lm.config.vocab_size
  assert type(hf_model).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}.get(
      case, "Qwen2ForCausalLM")
  tokens, mask = left_padded_batch(lm.config.vocab_size, lm.tokenizer.pad_id, seed=2)
  full, _ = left_padded_batch(lm.config.vocab_size, lm.tokenizer.pad_id, seed=3, pads=(0, 0, 0))
  _compare(f"{case} export unpadded", ours_forward(lm.config, lm.params, full),
           hf_forward(hf_model, full))
  _compare(f"{case} export padded", ours_forward(lm.config, lm.params, tokens, mask),
           hf_forward(hf_model, tokens, mask), mask)


def test_parity_check_can_fail(hf_dirs):
  """The comparison is sensitive: a tiny change of one weight breaks it."""
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["llama"]).eval()
  lm = instructjax.from_hf(hf_dirs["llama"])
  tokens, mask = left_padded_batch(hf_model.config.vocab_size, lm.tokenizer.pad_id)
  params = jax.tree.map(lambda x: x, lm.params)
  params["layers"]["attn"]["k_kernel"] = params["layers"]["attn"]["k_kernel"].at[2, 0, 1, 3].add(
      1e-2)
  with pytest.raises(AssertionError):
    _compare("llama corrupted", ours_forward(lm.config, params, tokens, mask),
             hf_forward(hf_model, tokens, mask), mask)
