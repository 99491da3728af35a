"""Throughput of the SFT batch pipeline on this host, in examples/s.

    python -m instructjax.data.benchmark [--num_examples 20000] [--batches 300]

Synthetic InstructWorld-sized demonstrations (prompts ~30 characters, responses ~20) with the
CharTokenizer, seq_len 128, batch 32. Reports the eager load + validate + tokenize pass and
the grain iteration (rows built, packed or padded, batched) separately, unpacked and packed;
packed rows hold several examples, so its examples/s counts documents, not rows.
"""
from __future__ import annotations

import argparse
import random
import string
import time

import numpy as np

from instructjax.data.iterators import make_lm_iterator
from instructjax.tokenizer import CharTokenizer

_WORDS = ["red", "blue", "box", "key", "door", "north", "room", "lamp", "cat", "where", "is",
          "the", "what", "colour", "of", "in", "a", "it", "near"]


def synthetic_demonstrations(n: int, seed: int = 0) -> list[dict[str, str]]:
  """Prompts of ~30 characters and responses of ~20, from a small word list."""
  rng = random.Random(seed)

  def sentence(target: int) -> str:
    words = []
    while len(" ".join(words)) < target:
      words.append(rng.choice(_WORDS))
    return " ".join(words).capitalize()

  return [{"prompt": sentence(rng.randint(24, 34)) + "?\n", "response": sentence(
      rng.randint(15, 24)) + rng.choice(string.digits) + "."} for _ in range(n)]


def measure(records, *, pack: bool, batch_size: int, seq_len: int, batches: int,
            read_threads: int) -> dict[str, float]:
  tok = CharTokenizer()
  t0 = time.perf_counter()
  it = make_lm_iterator(records, tok, batch_size=batch_size, seq_len=seq_len, seed=0, pack=pack,
                        shard_index=0, shard_count=1, read_threads=read_threads, log=False)
  t1 = time.perf_counter()
  next(it)  # Warm-up (first packer fill, thread start).
  t2 = time.perf_counter()
  docs = 0
  for _ in range(batches):
    batch = next(it)
    docs += int(batch["segment_ids"].max(axis=1).sum())
  t3 = time.perf_counter()
  fill = float(np.mean(batch["segment_ids"] > 0))
  return {"encode_examples_per_s": len(records) / (t1 - t0),
          "iter_examples_per_s": docs / (t3 - t2), "iter_batches_per_s": batches / (t3 - t2),
          "examples_per_batch": docs / batches, "token_fill": fill}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_examples", type=int, default=20000)
  parser.add_argument("--batches", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--read_threads", type=int, default=0)
  args = parser.parse_args(argv)
  records = synthetic_demonstrations(args.num_examples)
  mean_p = np.mean([len(r["prompt"]) for r in records])
  mean_r = np.mean([len(r["response"]) for r in records])
  print(f"{args.num_examples} synthetic demonstrations: prompt {mean_p:.1f} chars, response "
        f"{mean_r:.1f} chars; seq_len {args.seq_len}, batch {args.batch_size}")
  for pack in (False, True):
    m = measure(records, pack=pack, batch_size=args.batch_size, seq_len=args.seq_len,
                batches=args.batches, read_threads=args.read_threads)
    print(f"{'packed' if pack else 'unpacked':>8}: load+validate+tokenize "
          f"{m['encode_examples_per_s']:,.0f} examples/s; batches "
          f"{m['iter_examples_per_s']:,.0f} examples/s ({m['iter_batches_per_s']:,.1f} "
          f"batches/s, {m['examples_per_batch']:.1f} examples/batch, "
          f"{100 * m['token_fill']:.0f}% of tokens real)")


if __name__ == "__main__":
  main()
