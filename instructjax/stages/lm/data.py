"""What the LM stages read: demonstrations (SFT) or documents (pretraining) as device batches.

Records come from `config.data` (stages/inputs.py: InstructWorld, JSONL or TFDS); the train
iterator is checkpointable (its position is saved with the state); the held-out batches are a
fixed list, the same at every evaluation.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import jax
import jax.numpy as jnp

from instructjax.config import ConfigError
from instructjax.data import make_lm_iterator
from instructjax.parallel.distributed import host_batch_size
from instructjax.stages import inputs
from instructjax.stages.device_data import DeviceIterator, fixed_batches
from instructjax.stages.lm.step import LM_KEYS


def _iterator(records, tokenizer, config, **kw):
  kind = "demonstrations" if config.stage == "sft" else "texts"
  return make_lm_iterator(records, tokenizer, batch_size=host_batch_size(config.train.batch_size),
                          seq_len=config.data.seq_len, pack=config.data.pack, mode=config.stage,
                          **inputs.encode_kwargs(config, kind), **kw)


def pretrain_mix(config) -> Optional[list[dict]]:
  """The pretraining documents ({"text"}) SFT mixes in, or None (config.data.pretrain_docs
  = 0, the default, and every other stage): the first pretrain_docs of InstructWorld's
  pretraining split, or of config.data.pretrain_mix_path (JSONL) for other sources."""
  n = int(config.data.get("pretrain_docs", 0))
  if config.stage != "sft" or n <= 0:
    return None
  if config.data.source == "instructworld":
    return inputs.lm_records(config, "pretrain", "train")[:n]
  path = config.data.pretrain_mix_path
  out = []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if len(out) == n:
        break
      if not line.strip():
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ConfigError(f"config.data.pretrain_mix_path: {path}:{line_no}: not JSON ({e})") from e
  return out


def check_pretrain_mix(config) -> None:
  """config.data.pretrain_docs / pretrain_mix_path, each error naming its key."""
  n = config.data.get("pretrain_docs", 0)
  if not isinstance(n, int) or n < 0:
    raise ConfigError(f"config.data.pretrain_docs: must be an integer >= 0 (0 = no pretraining "
                      f"text in SFT), got {n!r}")
  if not n or config.data.source == "instructworld":
    return
  if config.stage != "sft":
    raise ConfigError(f"config.data.pretrain_docs: mixes pretraining text into SFT; stage "
                      f"{config.stage!r} reads pretraining text only")
  path = config.data.get("pretrain_mix_path", "")
  if not path:
    raise ConfigError("config.data.pretrain_mix_path: required when config.data.pretrain_docs > 0 "
                      f"and config.data.source={config.data.source!r} (a JSONL file of {{\"text\"}})")
  if not os.path.isfile(path):
    raise ConfigError(f"config.data.pretrain_mix_path: {path} does not exist")


def train_batches(config, tokenizer, ctx) -> DeviceIterator:
  """Shuffled, repeating, checkpointable batches of the training split (SFT: with
  `pretrain_mix` documents shuffled in)."""
  records = inputs.lm_records(config, config.stage, "train")
  return DeviceIterator(_iterator(records, tokenizer, config, seed=config.seed,
                                  mix_texts=pretrain_mix(config)), ctx, LM_KEYS)


def eval_batches(config, tokenizer, ctx) -> list[dict]:
  """The first train.eval_batches batches of the held-out split, in order (none without one)."""
  if not inputs.has_eval(config):
    return []
  records = inputs.lm_records(config, config.stage, "eval")
  it = _iterator(records, tokenizer, config, seed=0, num_epochs=1, shuffle=False,
                 drop_remainder=False, log=False)
  return fixed_batches(it, LM_KEYS, ctx, config.train.eval_batches)


def batch_spec(config) -> dict:
  shape = (config.train.batch_size, config.data.seq_len)
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in LM_KEYS}
