"""Reward/value models <-> HF *ForSequenceClassification (num_labels=1): score parity and the
score-bias policy (HF's score layer has no bias)."""
import numpy as np
import pytest
import transformers
from hf_testlib import build_hf_model, hf_forward, left_padded_batch, ours_forward, random_params

import instructjax
from instructjax.hf import HFConversionError, SCORE_BIAS_KEY, import_hf, read_hf_config
from instructjax.models import last_token_index

TOL = 1e-4
FAMILIES = ("gpt2", "llama", "qwen2")


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory):
  out = {}
  for case in FAMILIES:
    d = str(tmp_path_factory.mktemp(f"rm_{case}"))
    build_hf_model(case, d, head="scalar", seed=5)
    out[case] = d
  return out


def _scores(lm, tokens, mask) -> np.ndarray:
  values = ours_forward(lm.config, lm.params, tokens, mask, head="scalar")  # [B, T]
  return values[np.arange(len(values)), np.asarray(last_token_index(mask))]


def _compare(label, ours, ref):
  diff = float(np.abs(ours - ref).max())
  print(f"PARITY {label}: max|score diff| = {diff:.3e} (scores up to {np.abs(ref).max():.1f})")
  assert diff <= TOL, label


@pytest.mark.parametrize("case", FAMILIES)
def test_imported_reward_model_matches_transformers(case, rm_dirs):
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(rm_dirs[case]).eval()
  lm = instructjax.from_hf(rm_dirs[case])
  assert lm.head == "scalar" and float(lm.params["score_bias"][0]) == 0.0
  tokens, mask = left_padded_batch(hf_model.config.vocab_size, lm.tokenizer.pad_id)
  _compare(f"{case} reward import padded", _scores(lm, tokens, mask),
           hf_forward(hf_model, tokens, mask)[:, 0])
  full, full_mask = left_padded_batch(hf_model.config.vocab_size, lm.tokenizer.pad_id,
                                      pads=(0, 0, 0))
  _compare(f"{case} reward import unpadded", _scores(lm, full, full_mask),
           hf_forward(hf_model, full)[:, 0])


@pytest.mark.parametrize("case", FAMILIES)
def test_exported_reward_model_matches_transformers(case, rm_dirs, tmp_path):
  base = instructjax.from_hf(rm_dirs[case])
  params = random_params(base.config, "scalar", seed=7)
  params["score_bias"][:] = 0.0
  lm = instructjax.LM(base.config, params, base.tokenizer, head="scalar")
  out = str(tmp_path / "rm")
  lm.to_hf(out)
  hf = read_hf_config(out)
  assert hf["architectures"][0].endswith("ForSequenceClassification")
  assert hf["pad_token_id"] == lm.tokenizer.pad_id != lm.tokenizer.eos_id
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  assert hf_model.config.num_labels == 1 and hf_model.score.bias is None
  tokens, mask = left_padded_batch(lm.config.vocab_size, lm.tokenizer.pad_id, seed=4)
  _compare(f"{case} reward export padded", _scores(lm, tokens, mask),
           hf_forward(hf_model, tokens, mask)[:, 0])
  # Right padding without a mask: HF finds the scored token through pad_token_id alone.
  right, right_mask = tokens[:, ::-1].copy(), mask[:, ::-1].copy()
  _compare(f"{case} reward export right-padded, pad id only", _scores(lm, right, right_mask),
           hf_forward(hf_model, right)[:, 0])


def test_score_api_matches_transformers_on_text(rm_dirs):
  """lm.score builds prompt + response + EOS and reads the score at EOS; HF agrees."""
  d = rm_dirs["llama"]
  lm = instructjax.from_hf(d)
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(d).eval()
  prompts = ["the cat sat on", "hello world, how"]
  responses = ["the mat.", "are you? a dog ran to the park"]
  scores = lm.score(prompts, responses)
  for p, r, s in zip(prompts, responses, scores):
    ids = lm.tokenizer.encode(p) + lm.tokenizer.encode(r) + [lm.tokenizer.eos_id]
    ref = hf_forward(hf_model, np.asarray([ids]))[0, 0]
    assert abs(s - ref) <= TOL
  with pytest.raises(ValueError, match="scalar head"):
    instructjax.LM(lm.config, {k: v for k, v in lm.params.items() if not k.startswith("score")},
                   lm.tokenizer).score(prompts, responses)


def test_nonzero_score_bias_is_stored_by_default_or_refused(rm_dirs, tmp_path):
  lm = instructjax.from_hf(rm_dirs["qwen2"])
  lm.params["score_bias"] = lm.params["score_bias"] + 0.375
  with pytest.raises(HFConversionError, match="score_bias"):
    lm.to_hf(str(tmp_path / "refused"), score_bias="error")
  out = str(tmp_path / "stored")
  lm.to_hf(out)  # A folded normalisation exports without extra arguments.
  assert read_hf_config(out)[SCORE_BIAS_KEY] == 0.375
  # transformers ignores the bias: its scores are ours minus the bias, and adding the recorded
  # value (what the README tells a transformers user) gives ours ...
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  tokens, mask = left_padded_batch(lm.config.vocab_size, lm.tokenizer.pad_id)
  ours = _scores(lm, tokens, mask)
  np.testing.assert_allclose(ours - 0.375, hf_forward(hf_model, tokens, mask)[:, 0], atol=TOL)
  np.testing.assert_allclose(
      ours, hf_forward(hf_model, tokens, mask)[:, 0] + hf_model.config.instructjax_score_bias,
      atol=TOL)
  # ... while an instructjax import restores it exactly.
  again = import_hf(out)
  assert np.array_equal(again.params["score_bias"], np.asarray(lm.params["score_bias"]))
  assert np.array_equal(_scores(instructjax.load(out), tokens, mask), ours)
