"""What each stage reads, resolved from `config.data`.

`config.data.source`:
  "instructworld"  generated on the fly from `config.data.world` (no files, no download);
  "jsonl"          `config.data.train_path` / `config.data.eval_path` in the formats of
                   instructjax/data/SCHEMAS.md (optionally through `config.data.adapter`);
  "tfds"           `config.data.tfds_name` (+ `tfds_data_dir`), splits `train_split`/`eval_split`.
"""
from __future__ import annotations

from typing import Any

from instructjax.data import load_tfds
from instructjax.config import ConfigError
from instructjax.tokenizer import CharTokenizer, Tokenizer
from instructjax.world import splits as world_splits
from instructjax.world.prompts import gold_answer

SOURCES = ("instructworld", "jsonl", "tfds")


def world_config(data_cfg) -> world_splits.WorldConfig:
  try:
    return world_splits.WorldConfig(**data_cfg.world.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.data.world: {e}") from e


def _world_records(kind: str, split: str, world) -> list[dict]:
  if kind == "pretrain":
    docs = (world_splits.pretrain_documents(world) if split == "train"
            else world_splits.pretrain_heldout_documents(world))
    return [{"text": d} for d in docs]
  if kind == "sft":
    if split == "train":
      return [{"prompt": d.prompt, "response": d.response}
              for d in world_splits.sft_demonstrations(world)]
    # Held-out prompts with their gold answers: the SFT eval loss.
    return [{"prompt": p, "response": gold_answer(p)} for p in world_splits.heldout_prompts(world)]
  raise ValueError(f"no InstructWorld records of kind {kind!r}")


def lm_records(config, kind: str, split: str) -> Any:
  """Records (or a path) for the LM stages: kind "pretrain" ({"text"}) or "sft"."""
  data = config.data
  if data.source not in SOURCES:
    raise ConfigError(f"config.data.source: {data.source!r} is not one of {SOURCES}")
  if data.source == "instructworld":
    return _world_records(kind, split, world_config(data))
  if data.source == "jsonl":
    key = "train_path" if split == "train" else "eval_path"
    if not data[key]:
      raise ConfigError(f"config.data.{key}: required when config.data.source='jsonl'")
    return data[key]
  split_name = data.train_split if split == "train" else data.eval_split
  if not data.tfds_name:
    raise ConfigError("config.data.tfds_name: required when config.data.source='tfds'")
  return load_tfds(data.tfds_name, split=split_name, data_dir=data.tfds_data_dir or None)


def default_tokenizer(config) -> Tokenizer:
  if config.data.source == "instructworld":
    return CharTokenizer()
  raise ConfigError("config.init_from: a non-InstructWorld source needs a model directory (with "
                    "its tokenizer) to start from")
