"""What the LM stages read: demonstrations (SFT) or documents (pretraining) as device batches.

Records come from `config.data` (stages/inputs.py: InstructWorld, JSONL or TFDS); the train
iterator is checkpointable (its position is saved with the state); the held-out batches are a
fixed list, the same at every evaluation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

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


def train_batches(config, tokenizer, ctx) -> DeviceIterator:
  """Shuffled, repeating, checkpointable batches of the training split."""
  records = inputs.lm_records(config, config.stage, "train")
  return DeviceIterator(_iterator(records, tokenizer, config, seed=config.seed), ctx, LM_KEYS)


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
