"""Tokenizers behind one interface: InstructWorld's character tokenizer and HF tokenizers.

Every tokenizer exposes `vocab_size`, `pad_id`, `bos_id`, `eos_id` (PAD != EOS always),
`encode(text, add_bos=False) -> list[int]`, `decode(ids, skip_special=True) -> str` and
`save(directory)`. `load_tokenizer(directory)` reads back whichever kind was saved there.
"""
from __future__ import annotations

import json
import os
import string
from typing import Iterable, Protocol, Sequence

CHAR_TOKENIZER_FILE = "instructjax_tokenizer.json"

# InstructWorld's alphabet (spec: "Alphabet and tokens").
WORLD_ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits + " \n:.!?,()"


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str: ...

  def save(self, directory: str) -> None: ...


class CharTokenizer:
  """Character-level tokenizer: ids 0..2 are PAD, BOS, EOS, then one id per alphabet character."""

  PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

  def __init__(self, alphabet: str = WORLD_ALPHABET):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError("CharTokenizer alphabet has repeated characters")
    self.alphabet = alphabet
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self._offset = 3
    self._char_to_id = {c: i + self._offset for i, c in enumerate(alphabet)}
    self.vocab_size = len(alphabet) + self._offset

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = [self.bos_id] if add_bos else []
    for pos, ch in enumerate(text):
      tok = self._char_to_id.get(ch)
      if tok is None:
        raise ValueError(
            f"character {ch!r} at position {pos} of {text[:40]!r} is not in the tokenizer's "
            f"alphabet {self.alphabet!r}")
      ids.append(tok)
    return ids

  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
    out = []
    for tok in ids:
      tok = int(tok)
      if tok >= self._offset:
        out.append(self.alphabet[tok - self._offset])
      elif not skip_special:
        out.append((self.PAD, self.BOS, self.EOS)[tok])
    return "".join(out)

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CHAR_TOKENIZER_FILE), "w") as f:
      json.dump({"type": "char", "alphabet": self.alphabet}, f)

  def __eq__(self, other) -> bool:
    return isinstance(other, CharTokenizer) and other.alphabet == self.alphabet

  def __hash__(self) -> int:
    return hash(("char", self.alphabet))


def load_tokenizer(directory: str) -> Tokenizer:
  """Loads the tokenizer saved in `directory` (instructjax char tokenizer or HF files)."""
  path = os.path.join(directory, CHAR_TOKENIZER_FILE)
  if os.path.exists(path):
    with open(path) as f:
      spec = json.load(f)
    if spec.get("type") != "char":
      raise ValueError(f"{path}: unknown tokenizer type {spec.get('type')!r}")
    return CharTokenizer(spec["alphabet"])
  if os.path.exists(os.path.join(directory, "tokenizer.json")) or os.path.exists(
      os.path.join(directory, "tokenizer_config.json")):
    from instructjax.hf.tokenizer import HFTokenizer  # Optional dependency (transformers).
    return HFTokenizer.from_pretrained(directory)
  raise FileNotFoundError(
      f"no tokenizer in {directory}: expected {CHAR_TOKENIZER_FILE} or HF tokenizer files")


def batch_encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
  return [tokenizer.encode(t) for t in texts]
