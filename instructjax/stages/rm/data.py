"""What the reward model reads: ranked comparisons as batches, and the SFT samples its
normalisation is computed on, all loaded (and sampled) before anything is compiled.

Comparisons (config.data): InstructWorld "static" (the spec's edited gold answers) or "policy"
(K samples of the SFT policy at `config.rm.temperature`, ranked by the simulated labelers), or
JSONL/TFDS; held-out comparisons are built the same way on the world's held-out prompts from
their own random stream (or read from config.data.eval_path). Like every comparison response, a
sample that did not finish is scored with an EOS appended (the data layer's rule); the labelers
gave it correctness 0.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from instructjax.data import batching, make_comparison_iterator
from instructjax.data.encode import EncodeConfig, encode_comparison
from instructjax.data.errors import DataReport
from instructjax.data.schemas import Comparison as DataComparison
from instructjax.parallel.distributed import host_batch_size
from instructjax.stages import inputs
from instructjax.stages.device_data import fixed_batches, to_device_batch
from instructjax.stages.rm.sampling import (MAX_REDRAWS, Sft, cached_jsonl, drop_blank,
                                            norm_sampling, stable_seed)
from instructjax.stages.rm.step import EVAL_KEYS, RM_KEYS
from instructjax.world import comparisons as world_cmp
from instructjax.world import splits as world_splits

COMPARISONS_DIR = "comparisons"
NORM_SAMPLES_FILE = "norm_samples.jsonl"

_log = logging.getLogger(__name__)


def packed_len(config) -> int:
  """config.data.packed_len (0 = K rows per prompt; configs written before packing lack it)."""
  return config.data.get("packed_len", 0)


def heldout_world_comparisons(world: world_splits.WorldConfig,
                              sample: Optional[world_cmp.SampleResponses]
                              ) -> list[world_cmp.Comparison]:
  """Comparisons on the world's held-out prompts: static, or of `sample` when given; in a
  group-conditioned world, like the training comparisons, each labeler's group is drawn first
  and tags the prompt, so the held-out accuracy is measured on the inputs the RM is trained
  and used on."""
  prompts = world_splits.heldout_prompts(world)
  rng = world_splits.split_rng(world, "rm_heldout_comparisons")  # Not any training stream.
  grouped = world.group_conditioned
  if sample is None:
    return world_cmp.static_comparisons(prompts, rng, condition_on_groups=grouped)
  return world_cmp.policy_comparisons(prompts, sample, rng, condition_on_groups=grouped)


def world_comparisons(config, workdir: str, sft: Sft
                      ) -> tuple[list[world_cmp.Comparison], list[world_cmp.Comparison], dict]:
  """(train, held-out) InstructWorld comparisons and counts; policy ones cached in workdir."""
  world = inputs.world_config(config.data)
  if world.comparison_source == "static":
    return (world_splits.static_comparisons_for(world),
            heldout_world_comparisons(world, None), {})
  settings = {**sft.settings(), "world": config.data.world.to_dict()}
  distinct = bool(config.rm.get("distinct_responses", False))
  if distinct:  # Only when on, so caches written before the key stay valid.
    settings["distinct_responses"] = True
  if world.group_conditioned:
    # Held-out comparisons of a group-conditioned world carry the group tag since this key:
    # a cache sampled before (bare held-out prompts) is refused, not reused.
    settings["heldout_group_tags"] = True
  stats = {}

  def build(split: str) -> Callable[[], list[dict]]:
    def go():
      t0 = time.time()
      sampler = sft.sampler(f"comparisons_{split}", distinct=distinct)
      cmps = (world_splits.policy_comparisons_for(world, sampler) if split == "train"
              else heldout_world_comparisons(world, sampler))
      kept = [c for c in map(drop_blank, cmps) if c is not None]
      stats[f"{split}_sampling_s"] = time.time() - t0
      stats[f"{split}_blank_responses"] = sampler.num_blank
      _log.info("sampled %d %s comparisons from the SFT policy in %.1fs (%d blank responses "
                "left out)", len(kept), split, time.time() - t0, sampler.num_blank)
      if distinct:
        stats[f"{split}_prompts_with_duplicates"] = sampler.num_duplicate_prompts
        _log.info("%s comparisons: %d prompts still have two equal responses after %d redraws",
                  split, sampler.num_duplicate_prompts, MAX_REDRAWS)
      return [c.to_json() for c in kept]
    return go

  out = [[world_cmp.Comparison.from_json(d) for d in cached_jsonl(
      os.path.join(workdir, COMPARISONS_DIR, f"{split}.jsonl"), settings, build(split))]
         for split in ("train", "heldout")]
  return out[0], out[1], stats


def to_records(cmps: Sequence[world_cmp.Comparison]) -> list[dict]:
  return [c.to_json() for c in cmps]


def comparison_sources(config, workdir: str, sft: Sft
                       ) -> tuple[Any, Any, dict, Optional[list[world_cmp.Comparison]]]:
  """(train records or source, held-out records or source or None, info, InstructWorld's
  held-out comparisons or None) from config.data."""
  data = config.data
  if data.source == "instructworld":
    train, heldout, stats = world_comparisons(config, workdir, sft)
    info = {"comparison_source": data.world.comparison_source, **stats}
    return to_records(train), to_records(heldout), info, heldout
  train = inputs.lm_records(config, "comparisons", "train")
  heldout = None
  if data.source == "tfds" or data.eval_path:
    heldout = inputs.lm_records(config, "comparisons", "eval")
  else:
    _log.warning("config.data.eval_path is empty: no held-out comparisons, no held-out accuracy")
  return train, heldout, {"comparison_source": data.source}, None


def comparison_iterator(records, tokenizer, config, k_max: Optional[int], train: bool):
  kw = dict(batch_size=host_batch_size(config.train.batch_size), seq_len=config.data.seq_len,
            max_responses=k_max, packed_len=packed_len(config) or None,
            pack_bucket=config.data.get("pack_bucket", 64),
            **inputs.encode_kwargs(config, "comparisons"))
  if train:
    return make_comparison_iterator(records, tokenizer, seed=config.seed, **kw)
  return make_comparison_iterator(records, tokenizer, seed=0, num_epochs=1, shuffle=False,
                                  drop_remainder=False, **kw)


def text_batches(pairs: Sequence[tuple[str, str]], tokenizer, config, k_max: int,
                 ctx) -> list[dict]:
  """(prompt, response) pairs as RM batches, encoded exactly as comparison responses.

  Independent sequences fill the K_max slots of each row (slot order = input order), so the
  compiled eval step scores them; only `scores` at k_mask are meaningful. Every host holds all
  pairs and feeds its own rows of each global batch, so the global batch keeps input order.
  """
  cfg = EncodeConfig(seq_len=config.data.seq_len,
                     add_bos=bool(config.data.get("add_bos", False)))
  seqs, prompt_lens = [], []
  for i, (prompt, response) in enumerate(pairs):
    cmp = DataComparison(prompt=prompt, responses=(response,), ranking=(0,), where=f"sample[{i}]")
    ex = encode_comparison(cmp, tokenizer, cfg, DataReport(), k_max=1, group_id=-1,
                           example_id=i)
    seqs.extend(ex["seqs"])
    prompt_lens.append(ex["prompt_len"])
  pad, b = tokenizer.pad_id, config.train.batch_size
  hb, first = host_batch_size(b), jax.process_index() * host_batch_size(b)
  rows = [batching.comparison_row(seqs[i:i + k_max], k_max, config.data.seq_len, pad, -1,
                                  prompt_len=prompt_lens[i:i + k_max])
          for i in range(0, len(seqs), k_max)]
  empty = lambda: batching.empty_comparison_row(k_max, config.data.seq_len, pad)
  batches = []
  for start in range(0, len(rows), b):
    mine = rows[start + first:start + first + hb]
    batch = batching.collate(mine, hb, empty)
    batches.append(to_device_batch({k: batch[k] for k in RM_KEYS}, ctx))
  return batches


def norm_samples(config, workdir: str, sft: Sft, prompts: Sequence[str]) -> list[dict]:
  """`config.rm.norm_samples` SFT samples ({"prompt", "response", "finished"}), cached."""
  n = config.rm.norm_samples
  chosen = [prompts[i % len(prompts)] for i in range(n)]  # Cycled when there are fewer.

  def build():
    got = sft.sampler("norm_samples", for_normalization=True).texts(chosen)
    return [{"prompt": p, "response": t, "finished": f} for p, (t, f) in zip(chosen, got)]
  temperature, max_new = norm_sampling(config)
  settings = {**sft.settings(), "prompts_digest": stable_seed(*chosen), "num": n,
              "temperature": temperature, "max_new_tokens": max_new}
  return cached_jsonl(os.path.join(workdir, NORM_SAMPLES_FILE), settings, build)


def unique(items: Sequence[str]) -> list[str]:
  return list(dict.fromkeys(items))


@dataclasses.dataclass
class RmData:
  """Everything the stage reads, loaded (and sampled) before anything is compiled."""
  train_iter: Any  # BatchIterator of training comparisons.
  eval_batches: list[dict]  # Held-out comparisons on device (all of them).
  norm_samples: list[dict]  # SFT samples the normalisation is computed on.
  norm_batches: list[dict]  # The same, as RM batches.
  k_max: int
  info: dict  # Comparison source, sampling stats.
  world_heldout: Optional[list]  # InstructWorld's held-out comparisons (for the ceiling).


def load_data(config, workdir: str, tokenizer, sft: Sft, ctx) -> RmData:
  """Comparisons, held-out batches and normalisation samples (sampled from the SFT policy or
  read from the workdir's cache)."""
  train_src, heldout_src, info, world_heldout = comparison_sources(config, workdir, sft)
  train_iter = comparison_iterator(train_src, tokenizer, config, config.data.k_max or None, True)
  k_max = int(train_iter.fingerprint["k_max"])
  eval_iter = (comparison_iterator(heldout_src, tokenizer, config, k_max, False)
               if heldout_src is not None else None)
  eval_batches = fixed_batches(eval_iter, EVAL_KEYS, ctx) if eval_iter is not None else []
  pool = (train_iter if config.rm.norm_prompts == "train" else eval_iter).records
  samples = norm_samples(config, workdir, sft, unique([c.prompt for c in pool]))
  norm_batches = text_batches([(s["prompt"], s["response"]) for s in samples], tokenizer, config,
                              k_max, ctx)
  return RmData(train_iter, eval_batches, samples, norm_batches, k_max, info, world_heldout)


def batch_spec(config, k_max: int) -> dict:
  b, t, packed = config.train.batch_size, config.data.seq_len, packed_len(config)
  slots = lambda dtype: jax.ShapeDtypeStruct((b, k_max), dtype)
  seqs = lambda: jax.ShapeDtypeStruct((b, packed) if packed else (b, k_max, t), jnp.int32)
  return {"tokens": seqs(), "positions": seqs(), "segment_ids": seqs(),
          "k_mask": slots(jnp.bool_), "last_index": slots(jnp.int32)}

