"""HFTokenizer: the Tokenizer protocol over local HF files, PAD policy, chat templates."""
import os
import shutil

import numpy as np
import pytest
from hf_testlib import make_hf_tokenizer

from instructjax.hf import import_hf
from instructjax.hf.tokenizer import PAD_TOKEN, HFTokenizer
from instructjax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
  out = {}
  for style in ("gpt2", "llama", "qwen2"):
    d = str(tmp_path_factory.mktemp(f"tok_{style}"))
    make_hf_tokenizer(style).save_pretrained(d)
    out[style] = d
  return out


@pytest.mark.parametrize("style", ["gpt2", "llama", "qwen2"])
def test_pad_is_added_and_differs_from_eos(style, tok_dirs, tmp_path):
  raw = make_hf_tokenizer(style)
  tok = HFTokenizer.from_pretrained(tok_dirs[style])
  # gpt2 and llama have no PAD, qwen2's PAD is its EOS: each gets a new special token.
  assert tok.added_pad and tok.hf.pad_token == PAD_TOKEN
  assert tok.pad_id == len(raw) and tok.vocab_size == len(raw) + 1
  assert tok.pad_id != tok.eos_id
  print(f"TOKENIZER {style}: pad_id={tok.pad_id} eos_id={tok.eos_id} bos_id={tok.bos_id}")
  # Saved with the checkpoint and loaded back: same ids, nothing added a second time.
  tok.save(str(tmp_path / "saved"))
  again = load_tokenizer(str(tmp_path / "saved"))
  assert isinstance(again, HFTokenizer) and not again.added_pad
  assert (again.pad_id, again.eos_id, again.bos_id, again.vocab_size) == (
      tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size)


@pytest.mark.parametrize("style", ["gpt2", "llama", "qwen2"])
def test_encode_decode(style, tok_dirs):
  tok = HFTokenizer.from_pretrained(tok_dirs[style])
  text = "the cat sat on the mat."
  ids = tok.encode(text)
  assert ids and all(isinstance(i, int) for i in ids)
  assert tok.eos_id not in ids and tok.pad_id not in ids  # No special tokens unless asked.
  assert tok.decode(ids) == text
  assert tok.decode(ids + [tok.eos_id, tok.pad_id, tok.pad_id]) == text  # skip_special
  assert PAD_TOKEN in tok.decode(ids + [tok.pad_id], skip_special=False)
  if tok.bos_id is None:
    with pytest.raises(ValueError, match="no BOS"):
      tok.encode(text, add_bos=True)
  else:
    assert tok.encode(text, add_bos=True) == [tok.bos_id] + ids


def test_chat_template(tok_dirs):
  tok = HFTokenizer.from_pretrained(tok_dirs["qwen2"])
  assert tok.has_chat_template
  messages = [{"role": "user", "content": "hello world"}]
  text = tok.render_chat(messages)
  assert text.endswith("<|im_start|>assistant\n")
  ids = tok.apply_chat_template(messages)
  im_start = tok.hf.convert_tokens_to_ids("<|im_start|>")
  assert ids[0] == im_start and ids.count(im_start) == 2  # Markers are single special tokens.
  assert tok.decode(ids, skip_special=False) == text
  assert not HFTokenizer.from_pretrained(tok_dirs["gpt2"]).has_chat_template


def test_tokenizer_without_eos_is_refused(tmp_path):
  raw = make_hf_tokenizer("gpt2")
  raw.eos_token = None
  with pytest.raises(ValueError, match="no eos_token"):
    HFTokenizer(raw)


def test_gpt2_embedding_grows_for_the_added_pad(hf_dirs):
  """The PAD row appended to a GPT-2 embedding is the mean row (documented choice)."""
  imp = import_hf(hf_dirs["gpt2"])
  without = import_hf(hf_dirs["gpt2"], load_tokenizer=False)
  assert imp.config.vocab_size == without.config.vocab_size + 1 == imp.tokenizer.vocab_size
  np.testing.assert_array_equal(imp.params["embed"][:-1], without.params["embed"])
  np.testing.assert_allclose(imp.params["embed"][-1], without.params["embed"].mean(0), atol=1e-6)
  assert imp.tokenizer.pad_id == imp.config.vocab_size - 1


def test_tokens_a_transformers_class_adds_at_load_time_are_left_out(tmp_path):
  """transformers 5 loads every qwen2 directory with Qwen2Tokenizer, which appends its default
  unk_token <|endoftext|> when the vocabulary lacks it: the checkpoint's size is kept."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from hf_testlib import SENTENCES
  import transformers
  tk = Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator(SENTENCES * 4, trainers.BpeTrainer(
      vocab_size=120, special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"], initial_alphabet=[]))
  raw = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                             pad_token="<pad>")
  d = str(tmp_path / "qwen2")
  cfg = transformers.Qwen2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32,
                                 vocab_size=len(raw), max_position_embeddings=64)
  transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
  raw.save_pretrained(d)
  loaded = transformers.AutoTokenizer.from_pretrained(d)
  assert len(loaded) == len(raw) + 1 and loaded.unk_token == "<|endoftext|>"  # The cause.

  tok = HFTokenizer.from_pretrained(d)
  assert tok.vocab_size == len(raw) and not tok.added_pad
  assert tok.hf.unk_token is None and tok.encode("<|endoftext|>") == raw.encode(
      "<|endoftext|>", add_special_tokens=False)  # Plain text, no out-of-vocabulary id.
  imp = import_hf(d)
  assert imp.config.vocab_size == len(raw) == imp.params["embed"].shape[0]
  # Saved (as an export saves it), transformers and instructjax load the same size again.
  out = str(tmp_path / "saved")
  tok.save(out)
  shutil.copy(os.path.join(d, "config.json"), out)
  assert len(transformers.AutoTokenizer.from_pretrained(out)) == len(raw)
  assert HFTokenizer.from_pretrained(out).vocab_size == len(raw)
