"""What PPO reads: prompts to sample from (with example ids and gold answers for held-out
evaluation), pretraining text for the ptx term and the held-out pretraining loss.

InstructWorld: the world's ppo split and held-out prompts, and its pretraining documents;
JSONL: `config.data.train_path` / `eval_path` prompts ({"prompt"}) and `ptx_path` /
`ptx_eval_path` texts ({"text"}).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from instructjax.config import ConfigError
from instructjax.data import make_lm_iterator, make_prompt_iterator
from instructjax.parallel.distributed import host_batch_size
from instructjax.parallel.sharding import ShardingContext
from instructjax.stages import inputs
from instructjax.stages.device_data import fixed_batches, to_device_batch
from instructjax.stages.lm import LM_KEYS
from instructjax.stages.ppo.step import PROMPT_KEYS
from instructjax.world import splits as world_splits
from instructjax.world.prompts import gold_answer


def prompt_records(config, split: str) -> Any:
  """Prompt records ({"prompt"}) or a JSONL path; split "train" (ppo) or "eval" (held out)."""
  data = config.data
  if data.source == "instructworld":
    world = inputs.world_config(data)
    prompts = (world_splits.ppo_prompts(world) if split == "train"
               else world_splits.heldout_prompts(world))
    return [{"prompt": p} for p in prompts]
  return data.train_path if split == "train" else (data.eval_path or None)



def ptx_records(config, split: str) -> Any:
  """Pretraining documents ({"text"}) or a JSONL path; "train" or "eval" (held out)."""
  data = config.data
  if data.source == "instructworld":
    return inputs.lm_records(config, "pretrain", split)
  return data.ptx_path if split == "train" else (data.ptx_eval_path or None)



def check_world_prompt_len(config, tokenizer) -> None:
  """InstructWorld prompts must fit whole: cutting one from the left (what the prompt
  pipeline does to long prompts) would drop its instruction or its group tag."""
  if config.data.source != "instructworld":
    return
  longest = max(len(tokenizer.encode(r["prompt"]))
                for split in ("train", "eval") for r in prompt_records(config, split))
  if longest > config.data.prompt_len:
    raise ConfigError(f"config.data.prompt_len={config.data.prompt_len} is shorter than the "
                      f"world's longest prompt ({longest} tokens)")



def responses_per_prompt(config) -> int:
  return int(config.ppo.get("responses_per_prompt", 1))


def prompt_iterator(config, tokenizer):
  """Shuffled, repeating, checkpointable prompt batches (each host feeds its slice): the
  rollout's distinct prompts, rollout_batch_size / responses_per_prompt a batch."""
  distinct = int(config.ppo.rollout_batch_size) // responses_per_prompt(config)
  return make_prompt_iterator(
      prompt_records(config, "train"), tokenizer,
      batch_size=host_batch_size(distinct, "ppo.rollout_batch_size / ppo.responses_per_prompt"),
      prompt_len=config.data.prompt_len, seed=config.seed,
      **inputs.encode_kwargs(config, "prompts"))


def ptx_iterator(config, tokenizer):
  """Pretraining rows for the ptx term: ppo.ptx_batch_size per iteration."""
  return make_lm_iterator(
      ptx_records(config, "train"), tokenizer,
      batch_size=host_batch_size(int(config.ppo.ptx_batch_size), "ppo.ptx_batch_size"),
      seq_len=config.data.seq_len, seed=config.seed + 1, pack=config.data.pack,
      mode="pretrain", **inputs.encode_kwargs(config, "texts"))


def heldout_text_batches(config, tokenizer, ctx) -> list[dict]:
  """train.eval_batches fixed batches of held-out pretraining text (the alignment tax)."""
  records = ptx_records(config, "eval")
  if records is None or not config.train.eval_batches:
    return []
  it = make_lm_iterator(records, tokenizer, batch_size=host_batch_size(config.train.batch_size),
                        seq_len=config.data.seq_len, seed=0, pack=config.data.pack,
                        mode="pretrain", num_epochs=1, shuffle=False, drop_remainder=False,
                        log=False, **inputs.encode_kwargs(config, "texts"))
  return fixed_batches(it, LM_KEYS, ctx, config.train.eval_batches)


class PPOBatches:
  """{"prompts": [B, P] prompt batch, "ptx": [B_ptx, T] LM batch (when used)} on device.

  With repeats = k > 1 each prompt of the host batch appears k times in a row (B / k distinct
  prompts), so the rollout holds k independently sampled responses to each, and one update
  weighs differently scored answers to the same prompt against the same value of the prompt.
  Checkpointable: its state is both host iterators' states.
  """

  def __init__(self, prompts, ptx, ctx: Optional[ShardingContext], repeats: int = 1):
    self.prompts, self.ptx, self.ctx, self.repeats = prompts, ptx, ctx, repeats

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    p = next(self.prompts)
    rows = {k: np.repeat(p[k], self.repeats, axis=0) for k in PROMPT_KEYS}  # [B, P]
    batch = {"prompts": to_device_batch(rows, self.ctx)}
    if self.ptx is not None:
      x = next(self.ptx)
      batch["ptx"] = to_device_batch({k: x[k] for k in LM_KEYS}, self.ctx)
    return batch

  def get_state(self) -> dict:
    return {"prompts": self.prompts.get_state(),
            "ptx": None if self.ptx is None else self.ptx.get_state()}

  def set_state(self, state: dict) -> None:
    self.prompts.set_state(state["prompts"])
    if self.ptx is not None:
      self.ptx.set_state(state["ptx"])



def is_world_prompt(prompt: str) -> bool:
  """An InstructWorld instruction (with or without a group tag)."""
  try:
    gold_answer(prompt)
  except ValueError:
    return False
  return True


def gold_of(record) -> Optional[str]:
  """The gold answer of a prompt record: its "gold" metadata, else InstructWorld's rule."""
  meta = getattr(record, "metadata", None) or {}
  if isinstance(meta.get("gold"), str):
    return meta["gold"]
  try:
    return gold_answer(record.prompt)
  except ValueError:
    return None



def eval_prompt_batches(records, tokenizer, config, ctx) -> tuple[list, list, int]:
  """Fixed held-out prompt batches (device, with example_id), all records, prompts evaluated.

  Each host reads its slice of every global batch; the first ceil(n / global batch) batches
  hold the first n prompts (no shuffle), the same number on every host.
  """
  n = int(config.ppo.eval_prompts)
  if records is None or n == 0:
    return [], [], 0
  global_batch = config.train.batch_size
  it = make_prompt_iterator(records, tokenizer, batch_size=host_batch_size(global_batch),
                            prompt_len=config.data.prompt_len, seed=0, num_epochs=1,
                            shuffle=False, drop_remainder=False,
                            **inputs.encode_kwargs(config, "prompts"),
                            log=False)
  n = min(n, len(it.records))
  batches = []
  for b in it:
    if len(batches) == -(-n // global_batch):
      break
    batches.append(to_device_batch({k: b[k] for k in PROMPT_KEYS + ("example_id",)}, ctx))
  return batches, it.records, n

