"""JSONL export and import of the world's splits, one `<split>.jsonl` file per split.

Record formats by kind: demonstrations {"prompt","response"}; comparisons {"prompt","responses",
"ranking","group"} (plus "finished" only when some response did not finish); prompts {"prompt"};
texts {"text"} (a pretraining document without EOS). Kinds are the data layer's
(`instructjax.data.load_records(path, SPLITS[split])` validates an exported split).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence

from instructjax.world.comparisons import Comparison
from instructjax.world.demonstrator import Demonstration
from instructjax.world.splits import SPLITS, Record, WorldConfig, build_split


def to_json(kind: str, record: Record) -> dict:
  if kind == "demonstrations" or kind == "comparisons":
    return record.to_json()
  if kind == "prompts":
    return {"prompt": record}
  if kind == "texts":
    return {"text": record}
  raise ValueError(f"unknown record kind {kind!r}")


def from_json(kind: str, d: dict) -> Record:
  if kind == "demonstrations":
    return Demonstration.from_json(d)
  if kind == "comparisons":
    return Comparison.from_json(d)
  if kind == "prompts":
    return d["prompt"]
  if kind == "texts":
    return d["text"]
  raise ValueError(f"unknown record kind {kind!r}")


def write_jsonl(path: str, rows: Iterable[dict]) -> int:
  """Writes one JSON object per line; returns the number of rows."""
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      n += 1
  return n


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def split_path(directory: str, split: str) -> str:
  return os.path.join(directory, f"{split}.jsonl")


def export_split(directory: str, split: str, records: Sequence[Record]) -> str:
  os.makedirs(directory, exist_ok=True)
  path = split_path(directory, split)
  write_jsonl(path, (to_json(SPLITS[split], r) for r in records))
  return path


def load_split(directory: str, split: str) -> list[Record]:
  return [from_json(SPLITS[split], d) for d in read_jsonl(split_path(directory, split))]


def export_world(config: WorldConfig, directory: str,
                 splits: Optional[Sequence[str]] = None) -> dict[str, str]:
  """Builds and writes the given splits (default: all); returns split -> path."""
  return {s: export_split(directory, s, build_split(config, s)) for s in (splits or tuple(SPLITS))}
