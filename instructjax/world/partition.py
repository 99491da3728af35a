"""Which prompts are held out: a fixed property of the prompt text, not of any split's size.

A prompt is held out iff a stable hash (BLAKE2b) of its bare text (group tag and trailing newline
removed) falls in the lowest HELDOUT_FRACTION of the hash range. Training prompts (and the
pretraining corpus's statements) are drawn only from the rest, so held-out prompts never appear
in any training split, whatever the sizes and seeds. Free choice, made because the repeat family
has only 192 distinct prompts: deduplicating a held-out sample against large training sets would
starve it of repeat prompts, whereas this partition keeps every family in both parts (about 19
held-out repeat prompts). Within a part, the family is drawn uniformly first and then the
argument is redrawn until the prompt lies in that part, so families stay uniform.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from instructjax.world.prompts import FAMILIES, Instruction, sample_instruction, split_group

HELDOUT_FRACTION = 0.1
PARTITIONS = ("train", "heldout")
_SALT = b"instructworld-heldout-v1"
_MAX_TRIES = 100_000


def _bare(prompt: str) -> str:
  _, line = split_group(prompt)
  return line[:-1] if line.endswith("\n") else line


def is_heldout(prompt: str) -> bool:
  digest = hashlib.blake2b(_bare(prompt).encode(), digest_size=8, key=_SALT).digest()
  return int.from_bytes(digest, "big") < HELDOUT_FRACTION * 2.0**64


def in_partition(prompt: str, partition: Optional[str]) -> bool:
  if partition is None:
    return True
  if partition not in PARTITIONS:
    raise ValueError(f"unknown partition {partition!r}; expected one of {PARTITIONS} or None")
  return is_heldout(prompt) == (partition == "heldout")


def sample_instruction_in(rng: np.random.Generator, partition: Optional[str],
                          family: Optional[str] = None) -> Instruction:
  """An instruction whose prompt lies in `partition` (None: anywhere); family uniform."""
  if family is None:
    family = FAMILIES[int(rng.integers(0, len(FAMILIES)))]
  for _ in range(_MAX_TRIES):
    inst = sample_instruction(rng, family)
    if in_partition(inst.prompt, partition):
      return inst
  raise RuntimeError(f"no {family} prompt found in partition {partition!r}")


def sample_prompts(rng: np.random.Generator, n: int, partition: Optional[str]) -> list[str]:
  return [sample_instruction_in(rng, partition).prompt for _ in range(n)]
