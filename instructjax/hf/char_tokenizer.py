"""InstructWorld's CharTokenizer as an equivalent HF fast tokenizer, for exported checkpoints.

Same ids (PAD=0, BOS=1, EOS=2, then one id per alphabet character): a BPE model with the
characters as its vocabulary and no merges splits text into characters, with no normalizer or
pre-tokenizer so spaces and newlines are ordinary characters; the Fuse decoder joins tokens
back without separators.
"""
from __future__ import annotations

from instructjax.tokenizers import CharTokenizer


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
