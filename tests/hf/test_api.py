"""The public API: instructjax.from_hf / load -> LM.logits / generate / to_hf / save."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_testlib import hf_forward

import instructjax
from instructjax.hf import HFConversionError


@pytest.fixture(scope="module")
def llama(hf_dirs):
  return instructjax.from_hf(hf_dirs["llama"])


def test_logits_of_texts_are_per_sequence_and_match_transformers(llama, hf_dirs):
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["llama"]).eval()
  texts = ["the cat sat on the mat.", "hello", "a dog ran to the park! the quick brown fox"]
  out = llama.logits(texts)
  assert [o.shape for o in out] == [(len(llama.tokenizer.encode(t)), llama.config.vocab_size)
                                    for t in texts]
  for t, o in zip(texts, out):  # Each row alone, unpadded, in transformers.
    ref = hf_forward(hf_model, np.asarray([llama.tokenizer.encode(t)]))[0]
    assert np.abs(o - ref).max() <= 1e-4
  single = llama.logits(texts[1], add_bos=True)
  assert single.shape[0] == len(llama.tokenizer.encode(texts[1])) + 1
  # Arrays go straight through, with an optional mask.
  arr = llama.logits(np.asarray([llama.tokenizer.encode(texts[0])]))
  np.testing.assert_allclose(np.asarray(arr[0]), out[0], atol=1e-5)


def _hf_greedy(model, tok, prompt: str, max_new: int):
  """transformers' greedy continuation, cut at EOS: (ids, finished)."""
  ids = torch.tensor([tok.encode(prompt)])
  with torch.no_grad():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                         do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  new = out[0, ids.shape[1]:].tolist()
  if tok.eos_id in new:
    return new[:new.index(tok.eos_id)], True
  return new, False


def test_greedy_generate_matches_transformers(hf_dirs, tmp_path):
  lm = instructjax.from_hf(hf_dirs["qwen2"])
  out = str(tmp_path / "exported")
  lm.to_hf(out)  # Gives transformers the vocabulary with the added PAD.
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  prompts = ["the cat sat", "hello world, how are you? tell me a story"]
  results = lm.generate(prompts, max_new_tokens=10, temperature=0.0)
  assert [r["prompt"] for r in results] == prompts
  for p, r in zip(prompts, results):
    ids, finished = _hf_greedy(hf_model, lm.tokenizer, p, 10)
    assert r["response"] == lm.tokenizer.decode(ids) and r["finished"] == finished
  # Sampling is reproducible by seed.
  a = lm.generate(prompts, max_new_tokens=6, temperature=1.0, top_k=20, top_p=0.9, seed=3)
  assert a == lm.generate(prompts, max_new_tokens=6, temperature=1.0, top_k=20, top_p=0.9, seed=3)


def test_generate_with_chat_template(hf_dirs):
  lm = instructjax.from_hf(hf_dirs["qwen2"])
  messages = [{"role": "user", "content": "hello"}]
  [r] = lm.generate(messages, max_new_tokens=4, temperature=0.0)
  assert r["prompt"] == messages
  [same] = lm.generate(["hello"], max_new_tokens=4, temperature=0.0, chat=True)
  [plain] = lm.generate([lm.tokenizer.render_chat(messages)], max_new_tokens=4, temperature=0.0)
  assert r["response"] == same["response"] == plain["response"]
  with pytest.raises(ValueError, match="chat template"):
    instructjax.from_hf(hf_dirs["gpt2"]).generate(messages, max_new_tokens=2)


def test_load_reads_model_dirs_training_checkpoints_and_hf_dirs(llama, tmp_path):
  from instructjax.training.state import TrainState
  from instructjax.training import Checkpointer, CheckpointConfig, write_checkpoint_assets

  def same(a, b):
    assert a.config == b.config and a.head == b.head
    for x, y in zip(jax_leaves(a.params), jax_leaves(b.params)):
      assert np.array_equal(np.asarray(x), np.asarray(y))
    assert a.tokenizer.vocab_size == b.tokenizer.vocab_size

  # instructjax model directory (what the stages write).
  same(llama, instructjax.load(llama.save(str(tmp_path / "model"))))
  # HF directory.
  same(llama, instructjax.load(llama.to_hf(str(tmp_path / "hf"))))
  # Training checkpoint directory: parameters read out of the saved train state.
  ckdir = str(tmp_path / "checkpoints")
  state = TrainState(step=jnp.asarray(5), params=llama.params,
                     opt_state={"mu": llama.params, "count": jnp.asarray(5)})
  with Checkpointer(ckdir, CheckpointConfig(async_save=False)) as ck:
    ck.save(5, state)
  write_checkpoint_assets(ckdir, model_config=llama.config, tokenizer=llama.tokenizer)
  same(llama, instructjax.load(ckdir))
  with pytest.raises(FileNotFoundError, match="not an instructjax model directory"):
    instructjax.load(str(tmp_path))


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_wrong_head_and_missing_tokenizer(llama):
  with pytest.raises(ValueError, match="scalar head"):
    llama.score(["a"], ["b"])
  bare = instructjax.LM(llama.config, llama.params)
  with pytest.raises(ValueError, match="no tokenizer"):
    bare.logits("the cat")
  assert bare.logits([[3, 4, 5]])[0].shape == (3, llama.config.vocab_size)


def test_export_of_scalar_model_without_pad_is_refused(llama, tmp_path):
  from hf_testlib import random_params
  rm = instructjax.LM(llama.config, random_params(llama.config, "scalar"), head="scalar")
  with pytest.raises(HFConversionError, match="pad_token_id"):
    rm.to_hf(str(tmp_path / "rm"))


def test_generate_reports_finished_when_eos_is_sampled(hf_dirs):
  """All-zero output weights: greedy picks id 0, which is EOS for this tokenizer."""
  lm = instructjax.from_hf(hf_dirs["qwen2"])
  assert lm.tokenizer.eos_id == 0
  params = dict(lm.params, lm_head=jnp.zeros_like(lm.params["lm_head"]))
  stops = instructjax.LM(lm.config, params, lm.tokenizer)
  assert stops.generate(["the cat", "a dog ran"], max_new_tokens=5, temperature=0.0) == [
      {"prompt": "the cat", "response": "", "finished": True},
      {"prompt": "a dog ran", "response": "", "finished": True}]
