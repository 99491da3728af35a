"""What each stage reads, resolved from `config.data`.

`config.data.source`:
  "instructworld"  generated on the fly from `config.data.world` (no files, no download);
  "jsonl"          `config.data.train_path` / `config.data.eval_path` (optional: without it
                   no held-out evaluation) in the formats of instructjax/data/SCHEMAS.md
                   (optionally through `config.data.adapter`);
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


def check_source(config, sources=SOURCES) -> None:
  """config.data names a source this stage reads, with what that source needs; a file given
  to the InstructWorld source (which would silently ignore it) is an error. Then the encoding
  settings (`check_encoding`)."""
  check_encoding(config)
  data = config.data
  if data.source not in sources:
    raise ConfigError(f"config.data.source: {data.source!r} is not one of {tuple(sources)}")
  paths = {k: v for k, v in data.items() if k.endswith("_path") and v}
  if data.source == "instructworld":
    world_config(data)  # Raises naming config.data.world.
    if paths:
      key = sorted(paths)[0]
      raise ConfigError(f"config.data.{key}={paths[key]!r} is set, but config.data.source is "
                        "'instructworld', which generates its records and reads no file; set "
                        "--config.data.source=jsonl to train on your file")
  elif data.source == "jsonl" and not data.train_path:
    raise ConfigError("config.data.train_path: required when config.data.source='jsonl'")
  elif data.source == "tfds" and not data.tfds_name:
    raise ConfigError("config.data.tfds_name: required when config.data.source='tfds'")


# The record kind each stage's adapter must produce (instructjax.data.adapters).
ADAPTER_KINDS = {"pretrain": "texts", "sft": "demonstrations", "rm": "comparisons",
                 "ppo": "prompts"}


def check_encoding(config) -> None:
  """config.data's encoding settings: an adapter that makes this stage's records, and a
  seq_len with room for a prompt token, a response token and EOS (after BOS)."""
  from instructjax.data.adapters import ADAPTERS  # Only the names and kinds are needed here.
  data = config.data
  if data.on_error not in ("raise", "skip"):
    raise ConfigError(f"config.data.on_error: {data.on_error!r} is not 'raise' or 'skip'")
  if data.adapter:
    kind = ADAPTER_KINDS.get(config.stage)
    if data.source == "instructworld":
      raise ConfigError(f"config.data.adapter={data.adapter!r} is set, but config.data.source "
                        "is 'instructworld', whose records need no adapter")
    if data.adapter not in ADAPTERS:
      raise ConfigError(f"config.data.adapter: {data.adapter!r} is not one of "
                        f"{sorted(ADAPTERS)}")
    if ADAPTERS[data.adapter][1] != kind:
      raise ConfigError(f"config.data.adapter={data.adapter!r} makes "
                        f"{ADAPTERS[data.adapter][1]}, but config.stage={config.stage!r} reads "
                        f"{kind}")
  shortest = 3 + bool(data.get("add_bos", False))
  if data.seq_len < shortest and data.seq_len != 0:  # 0: from the model (stages/lengths.py).
    raise ConfigError(f"config.data.seq_len={data.seq_len}: a sequence needs at least "
                      f"{shortest} tokens (a prompt token, a response token and EOS"
                      f"{', after BOS' if shortest == 4 else ''})")


def check_tokenizer(config, tokenizer, key: str = "init_from") -> None:
  """The tokenizer of config.`key` can encode as config.data says: a BOS for add_bos."""
  if config.data.get("add_bos", False) and getattr(tokenizer, "bos_id", None) is None:
    raise ConfigError(f"config.data.add_bos=True, but the tokenizer of config.{key} has no BOS "
                      "token; leave add_bos off for this tokenizer")


def has_eval(config) -> bool:
  """Whether config.data names held-out records: InstructWorld and TFDS always do, JSONL when
  config.data.eval_path is set."""
  return config.data.source != "jsonl" or bool(config.data.eval_path)


def encode_kwargs(config, kind: str) -> dict:
  """What every iterator of a stage takes from config.data (kind: the records it reads)."""
  data = config.data
  out = dict(add_bos=bool(data.get("add_bos", False)), truncate=bool(data.get("truncate", True)),
             on_error=data.on_error)
  if data.adapter and ADAPTER_KINDS.get(config.stage) == kind:
    out["adapter"] = data.adapter
  return out


def lm_records(config, kind: str, split: str) -> Any:
  """Records (or a path) for the LM stages: kind "pretrain" ({"text"}) or "sft" (also the
  comparisons' paths of the RM stage). See `has_eval` for whether there is an "eval" split."""
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
