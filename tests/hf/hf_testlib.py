"""Offline helpers for the HF interop tests: tiny tokenizers and tiny random HF models.

Nothing is downloaded: tokenizers are trained on a few sentences with `tokenizers`, models are
built from configs with transformers + torch, given large random weights (so logits are O(1)
and every bias path matters) and saved with `save_pretrained` (safetensors).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from instructjax.models import DecoderLM  # noqa: E402
from instructjax.models.compiled import JitCache  # noqa: E402
from instructjax.hf.weights import expected_shapes  # noqa: E402
from instructjax.models import ModelConfig, positions_from_mask  # noqa: E402

SENTENCES = [
    "the cat sat on the mat.", "a dog ran to the park!", "hello world, how are you?",
    "reward models score responses.", "what is two plus two? four.", "user: hi assistant: hello",
    "the quick brown fox jumps over the lazy dog", "tell me a story about a cat and a dog",
    "user\nhello\nassistant\nhi there\n",
]

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def make_hf_tokenizer(style: str):
  """A PreTrainedTokenizerFast in the style of GPT-2 (byte-level BPE, <|endoftext|> = BOS = EOS,
  no PAD), Llama (metaspace BPE, <s>/</s>, no PAD) or Qwen2 (byte-level, PAD = EOS, chat
  template)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  if style == "llama":
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
  else:
    specials = (["<|endoftext|>"] if style == "gpt2"
                else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator(SENTENCES * 4, trainers.BpeTrainer(vocab_size=110, special_tokens=specials,
                                                            initial_alphabet=[]))
  if style == "gpt2":
    kw = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
  elif style == "llama":
    kw = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
  else:
    kw = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **kw)
  if style != "gpt2":
    tok.chat_template = CHAT_TEMPLATE
  return tok


def hf_config(case: str, vocab_size: int):
  """Tiny configs with odd sizes: GQA, explicit head_dim, llama3 rope scaling, q/k/v biases."""
  T = transformers
  if case == "gpt2":
    return T.GPT2Config(n_embd=48, n_layer=3, n_head=6, n_inner=80, vocab_size=vocab_size,
                        n_positions=64, bos_token_id=0, eos_token_id=0)
  if case == "llama":
    # head_dim 16 != 48 / 6, GQA 6/2, untied; rope bands: one kept, one smoothed, six scaled.
    return T.LlamaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2, head_dim=16, intermediate_size=80,
                         vocab_size=vocab_size, max_position_embeddings=128,
                         tie_word_embeddings=False, rms_norm_eps=1e-5,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "rope_theta": 5000.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 32},
                         rope_theta=5000.0)
  if case == "qwen2":  # untied, GQA 6/2
    return T.Qwen2Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2, intermediate_size=80, vocab_size=vocab_size,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         rope_theta=20000.0)
  if case == "qwen2_tied":  # tied, GQA 4/1, head_dim 12
    return T.Qwen2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, intermediate_size=64, vocab_size=vocab_size,
                         max_position_embeddings=128, tie_word_embeddings=True)
  raise ValueError(case)


TOKENIZER_STYLE = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2", "qwen2_tied": "qwen2"}
CASES = tuple(TOKENIZER_STYLE)


def randomize_(model, seed: int = 0, std: float = 0.2) -> None:
  """Large random weights in place: norms around 1, everything else N(0, std^2)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen) * std
      is_norm = "norm" in name or ".ln_" in name
      p.copy_(noise + 1.0 if is_norm and name.endswith("weight") else noise)


def build_hf_model(case: str, directory: str, head: str = "lm", seed: int = 0):
  """Saves tokenizer + random HF model (CausalLM or num_labels=1 classifier) in `directory`."""
  tok = make_hf_tokenizer(TOKENIZER_STYLE[case])
  # gpt2: vocab == tokenizer size, so adding PAD grows the embedding; others leave spare rows.
  vocab = len(tok) if case == "gpt2" else len(tok) + 9
  cfg = hf_config(case, vocab)
  if head == "scalar":
    cfg.num_labels = 1
    cfg.pad_token_id = len(tok)  # The PAD instructjax adds (llama/qwen2: a spare row).
    model = transformers.AutoModelForSequenceClassification.from_config(cfg)
  else:
    model = transformers.AutoModelForCausalLM.from_config(cfg)
  randomize_(model.eval(), seed)
  model.save_pretrained(directory)
  tok.save_pretrained(directory)
  return model, tok


def left_padded_batch(vocab: int, pad_id: int, seed: int = 0, length: int = 24,
                      pads=(0, 5, 11)) -> tuple[np.ndarray, np.ndarray]:
  """Tokens and mask int64 [B, length]: row r has pads[r] left-padding slots holding pad_id;
  real tokens avoid pad_id (HF's classifier finds the scored token by it)."""
  rng = np.random.RandomState(seed)
  tokens = rng.randint(0, vocab - 1, (len(pads), length))
  tokens = np.where(tokens >= pad_id, tokens + 1, tokens) % vocab
  mask = np.ones_like(tokens)
  for r, p in enumerate(pads):
    mask[r, :p] = 0
    tokens[r, :p] = pad_id
  return tokens, mask


def hf_forward(model, tokens: np.ndarray, mask=None) -> np.ndarray:
  """HF outputs: logits [B, T, V] (CausalLM) or pooled scores [B] (classifier). With a mask,
  position ids come from it, as instructjax computes them."""
  kw = {}
  if mask is not None:
    # A PAD instructjax appended (gpt2) is outside HF's vocabulary; padding slots are masked,
    # so any in-range id does there.
    tokens = np.where((mask == 0) & (tokens >= model.config.vocab_size), 0, tokens)
    kw = dict(attention_mask=torch.tensor(mask),
              position_ids=torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0)))
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), **kw).logits
  return out.float().numpy()


_FORWARDS = JitCache()  # Compiled once per (config, head) for the whole test session.


def ours_forward(cfg: ModelConfig, params, tokens: np.ndarray, mask=None, head: str = "lm"):
  """instructjax outputs for the same batch (positions from the mask, as for HF)."""
  mask = np.ones_like(tokens) if mask is None else mask
  seg = jnp.asarray(mask, jnp.int32)
  fn = _FORWARDS.get((cfg, head), lambda: jax.jit(
      lambda p, t, pos, s: DecoderLM(cfg, head).apply({"params": p}, t, pos, s)[0]))
  return np.asarray(fn(params, jnp.asarray(tokens, jnp.int32), positions_from_mask(seg), seg))


def random_params(cfg: ModelConfig, head: str = "lm", seed: int = 0, std: float = 0.2):
  """Random numpy params of DecoderLM(cfg, head): N(0, std^2), norm scales around 1. Built in
  numpy from the declared shapes: nothing to compile."""
  from flax import traverse_util
  rng = np.random.RandomState(seed)
  flat = {}
  for name, shape in expected_shapes(cfg, head).items():
    x = rng.normal(0.0, std, shape).astype(np.float32)
    flat[name] = x + 1.0 if name.endswith("norm/scale") else x
  return traverse_util.unflatten_dict(flat, sep="/")
