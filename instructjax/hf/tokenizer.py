"""Hugging Face tokenizers behind instructjax's Tokenizer protocol (local files only), and
InstructWorld's CharTokenizer as an equivalent HF fast tokenizer for exported checkpoints.

PAD policy: instructjax needs a PAD distinct from EOS (EOS ends a response and is learned; PAD
is masked out). Tokenizers without a PAD (GPT-2, Llama 3) or whose PAD is their EOS (Qwen2 base)
get a new special token `<|pad|>` appended to the vocabulary; the model importer grows the
embedding to match (new rows = mean embedding, see `instructjax.hf.weights.grow_vocab`). The
tokenizer is saved with the added token, so a re-import finds it and changes nothing.

Tokens of a tokenizer class, not of the checkpoint: transformers 5 loads every `qwen2`
directory with its Qwen2Tokenizer, whose constructor defaults `unk_token` (and `eos_token`,
`pad_token`) to `<|endoftext|>` and appends that token when the vocabulary lacks it. Such a
token is in neither tokenizer.json nor the directory's special-token settings, and the model
has no embedding row for it; `from_pretrained` loads without it (the attribute set to None),
so the vocabulary keeps the checkpoint's size, and the saved tokenizer_config.json records the
None, so transformers loads the export the same way.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

from instructjax.tokenizer import CharTokenizer

PAD_TOKEN = "<|pad|>"


class HFTokenizer:
  """Wraps a transformers fast tokenizer.

  Attributes:
    vocab_size: len(tokenizer), i.e. including added tokens (the model vocab must cover it).
    pad_id, eos_id: always set, pad_id != eos_id.
    bos_id: None for tokenizers without BOS (Qwen2); `encode(add_bos=True)` then raises.
    added_pad: True when `<|pad|>` was added by this wrapper.
  """

  def __init__(self, tokenizer: Any, *, add_pad: bool = True, where: str = "tokenizer"):
    self.hf = tokenizer
    if tokenizer.eos_token_id is None:
      raise ValueError(f"{where}: the tokenizer has no eos_token; instructjax needs one to end "
                       "responses (set tokenizer.eos_token and save it again)")
    self.added_pad = False
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
      if not add_pad:
        raise ValueError(f"{where}: no PAD distinct from EOS and add_pad=False")
      tokenizer.add_special_tokens({"pad_token": _unused_token(tokenizer, PAD_TOKEN)})
      self.added_pad = True
    self.pad_id = int(tokenizer.pad_token_id)
    self.eos_id = int(tokenizer.eos_token_id)
    self.bos_id: Optional[int] = (None if tokenizer.bos_token_id is None
                                  else int(tokenizer.bos_token_id))
    self.vocab_size = len(tokenizer)
    assert self.pad_id != self.eos_id

  @classmethod
  def from_pretrained(cls, path: str, add_pad: bool = True) -> "HFTokenizer":
    """Loads the tokenizer files in the local directory `path`; never downloads or runs code."""
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{path} is not a local directory with tokenizer files")
    from transformers import AutoTokenizer  # Optional dependency: instructjax[hf].
    kw = dict(local_files_only=True, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if not getattr(tok, "is_fast", False):
      raise ValueError(f"{path}: {type(tok).__name__} is a slow tokenizer; instructjax needs a "
                       "fast (tokenizers-backed) one, i.e. a tokenizer.json")
    foreign = class_default_tokens(tok, path)
    if foreign:  # See the module docstring.
      tok = AutoTokenizer.from_pretrained(path, **kw, **{attr: None for attr in foreign})
    return cls(tok, add_pad=add_pad, where=path)

  # --- Tokenizer protocol

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Token ids of `text` without the tokenizer's own special tokens; BOS only if asked."""
    ids = list(self.hf.encode(text, add_special_tokens=False))
    if add_bos:
      if self.bos_id is None:
        raise ValueError("add_bos=True but this tokenizer has no BOS token")
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    self.hf.save_pretrained(directory)

  # --- chat

  @property
  def has_chat_template(self) -> bool:
    return bool(getattr(self.hf, "chat_template", None))

  def render_chat(self, messages: Sequence[Mapping[str, str]],
                  add_generation_prompt: bool = True) -> str:
    """The chat template applied to `messages`, as text (special tokens written out)."""
    if not self.has_chat_template:
      raise ValueError("this tokenizer has no chat template")
    return self.hf.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                       add_generation_prompt=add_generation_prompt)

  def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                          add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered chat; the template itself places BOS and role markers."""
    return list(self.hf.encode(self.render_chat(messages, add_generation_prompt),
                               add_special_tokens=False))

  def __repr__(self) -> str:
    return (f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size}, "
            f"pad_id={self.pad_id}, bos_id={self.bos_id}, eos_id={self.eos_id})")


def class_default_tokens(tokenizer: Any, path: str) -> dict[str, str]:
  """{attribute: token} of the special tokens that `tokenizer` (loaded from `path`) has only
  because its class defaults to them: the token is not in the directory's tokenizer.json and the
  attribute is not set by its tokenizer_config.json or special_tokens_map.json."""
  tokenizer_json = os.path.join(path, "tokenizer.json")
  if not os.path.isfile(tokenizer_json):
    return {}
  from tokenizers import Tokenizer  # The file as written, without any class's additions.
  in_file = Tokenizer.from_file(tokenizer_json).get_vocab(with_added_tokens=True)
  named = set()
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    settings = os.path.join(path, name)
    if os.path.isfile(settings):
      with open(settings) as f:
        named |= {k for k, v in json.load(f).items() if v is not None}
  out = {}
  for attr in ("unk_token", "bos_token", "eos_token", "pad_token"):
    token = getattr(tokenizer, attr, None)
    if token is not None and str(token) not in in_file and attr not in named:
      out[attr] = str(token)
  return out


def _unused_token(tokenizer: Any, base: str) -> str:
  """`base`, or `base` with a suffix if the vocabulary already uses it for something else."""
  vocab = tokenizer.get_vocab()
  name, i = base, 0
  while name in vocab:
    i += 1
    name = f"{base[:-2]}_{i}|>"
  return name


# ---------------------------------------------------------------------------------------------
# InstructWorld's CharTokenizer as an HF fast tokenizer with the same ids (PAD=0, BOS=1, EOS=2,
# then one id per alphabet character): a BPE model with the characters as its vocabulary and no
# merges splits text into characters, with no normalizer or pre-tokenizer so spaces and newlines
# are ordinary characters; the Fuse decoder joins tokens back without separators.


def char_tokenizer_to_hf(tok: CharTokenizer):
  """A transformers PreTrainedTokenizerFast encoding and decoding exactly like `tok`."""
  from tokenizers import Tokenizer, decoders, models
  from transformers import PreTrainedTokenizerFast

  specials = (tok.PAD, tok.BOS, tok.EOS)
  vocab = {s: i for i, s in enumerate(specials)}
  vocab.update({c: i + len(specials) for i, c in enumerate(tok.alphabet)})
  backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  backend.add_special_tokens(list(specials))
  backend.decoder = decoders.Fuse()
  return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=tok.PAD, bos_token=tok.BOS,
                                 eos_token=tok.EOS)
