"""Reward model: SFT model dir -> comparisons -> ranking-loss training -> normalised RM dir.

  run(config, workdir):
    1. validate the config (every message names its key) and load the data, before compiling;
    2. the RM = the SFT model's trunk (every parameter but `lm_head`) + a fresh scalar head
       (zero kernel, zero bias: every response starts at score 0, loss log 2);
    3. comparisons (config.data): InstructWorld "static" (the spec's edited gold answers) or
       "policy" (K samples of the SFT policy at temperature `config.rm.temperature`, ranked by
       the simulated labelers), or JSONL/TFDS; held-out comparisons are built the same way on
       the world's held-out prompts from their own random stream (or read from eval_path).
       Like every comparison response, a sample that did not finish is scored with an EOS
       appended (the data layer's rule); the labelers gave it correctness 0;
    4. `run_loop` (resume, checkpoints, eval of held-out pairwise accuracy);
    5. normalisation: the RM scores `config.rm.norm_samples` SFT samples and the affine map
       that gives them mean 0 (and std 1 for "gain_bias") is folded into the score head;
    6. `<workdir>/model` (head "scalar") and `<workdir>/rm_results.json`.

Sampled data are cached in the workdir (comparisons/*.jsonl, norm_samples.jsonl, each with the
settings that made it in a .meta.json beside it), so a resumed run reuses them instead of
sampling again and a run with different settings refuses a stale cache.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructjax import config as config_lib
from instructjax.data import make_comparison_iterator
from instructjax.data import batching
from instructjax.data.encode import EncodeConfig, encode_comparison
from instructjax.data.errors import DataReport
from instructjax.data.schemas import Comparison as DataComparison
from instructjax.parallel.distributed import host_batch_size
from instructjax.generation import SamplingConfig, generate_texts
from instructjax.model_io import (TOKENIZER_DIR, load_model, read_model_dir_config,
                                  save_model)
from instructjax.models import DecoderLM
from instructjax.config import ConfigError
from instructjax.ops.reward_loss import reward_normalization
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import ShardingContext, param_shardings
from instructjax.stages import inputs
from instructjax.stages.device_data import DeviceIterator, to_device_batch
from instructjax.stages.jit import jit_step
from instructjax.stages.lm.run import RUNTIME_FIELDS, model_dir, sharding_context
from instructjax.models.heads import fold_affine, scalar_model_from_lm
from instructjax.stages.rm.step import (EVAL_KEYS, RM_KEYS, make_rm_eval_step, make_rm_train_step,
                                        pairwise_agreement)
from instructjax.training.state import boxed_param_init, create_train_state
from instructjax.tokenizer import load_tokenizer
from instructjax.training import CheckpointConfig, run_loop
from instructjax.world import comparisons as world_cmp
from instructjax.world import splits as world_splits
from instructjax.world.export import read_jsonl, write_jsonl
from instructjax.world.labelers import GROUP_SHARES, utility
from instructjax.world.prompts import gold_answer

NORMALIZE_MODES = ("bias", "gain_bias", "none")
NORM_PROMPTS = ("train", "heldout")
COMPARISONS_DIR = "comparisons"
NORM_SAMPLES_FILE = "norm_samples.jsonl"
RESULTS_FILE = "rm_results.json"
MAX_REDRAWS = 4  # Blank samples are redrawn this often (the data layer rejects blank responses).

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Config


def packed_len(config) -> int:
  """config.data.packed_len (0 = K rows per prompt; configs written before packing lack it)."""
  return config.data.get("packed_len", 0)


def validate(config, num_devices: int) -> tuple[int, int, int]:
  """Every RM-specific check, before anything is loaded or compiled. Returns the mesh shape."""
  if config.stage != "rm":
    raise ConfigError(f"config.stage: rm_driver runs 'rm', not {config.stage!r}")
  mesh_shape = config_lib.validate_common(config, num_devices)
  dp = mesh_shape[0] * mesh_shape[1]
  if not config.init_from:
    raise ConfigError("config.init_from: the reward model starts from an SFT model directory; "
                      "none given")
  if not os.path.isdir(config.init_from):
    raise ConfigError(f"config.init_from: {config.init_from} is not a directory")
  rm = config.rm
  if rm.normalize not in NORMALIZE_MODES:
    raise ConfigError(f"config.rm.normalize: {rm.normalize!r} is not one of {NORMALIZE_MODES}")
  if rm.norm_prompts not in NORM_PROMPTS:
    raise ConfigError(f"config.rm.norm_prompts: {rm.norm_prompts!r} is not one of {NORM_PROMPTS}")
  for key in ("norm_samples", "max_new_tokens", "sample_batch_size"):
    if rm[key] < 1:
      raise ConfigError(f"config.rm.{key}: must be >= 1, got {rm[key]}")
  if rm.temperature < 0:
    raise ConfigError(f"config.rm.temperature: must be >= 0, got {rm.temperature}")
  if rm.sample_batch_size % dp:
    raise ConfigError(f"config.rm.sample_batch_size={rm.sample_batch_size} is not divisible by "
                      f"the data-parallel size {dp}")
  packed = packed_len(config)
  if packed and packed < config.data.seq_len:
    raise ConfigError(f"config.data.packed_len={packed}: a packed row holds a prompt with all "
                      f"its responses, it cannot be shorter than config.data.seq_len "
                      f"{config.data.seq_len} (0 = no packing)")
  if packed and config.data.get("pack_bucket", 64) < 1:
    raise ConfigError(f"config.data.pack_bucket must be >= 1, got {config.data.pack_bucket}")
  if config.data.k_max and config.data.k_max < 2:
    raise ConfigError(f"config.data.k_max: a comparison needs K >= 2 slots, got "
                      f"{config.data.k_max} (0 = the largest K in the data)")
  if config.data.source not in inputs.SOURCES:
    raise ConfigError(f"config.data.source: {config.data.source!r} is not one of "
                      f"{inputs.SOURCES}")
  if config.data.source == "instructworld":
    inputs.world_config(config.data)  # Raises naming config.data.world.
  elif config.data.source == "jsonl" and not config.data.train_path:
    raise ConfigError("config.data.train_path: required when config.data.source='jsonl'")
  if config.data.source != "instructworld" and rm.norm_prompts == "heldout" and not (
      config.data.eval_path or config.data.source == "tfds"):
    raise ConfigError("config.rm.norm_prompts='heldout' needs held-out comparisons "
                      "(config.data.eval_path)")
  if config.model.dropout_rate:
    _log.warning("config.model.dropout_rate=%s is ignored: the reward model trains without "
                 "dropout", config.model.dropout_rate)
  return mesh_shape


# ---------------------------------------------------------------------------------------------
# Models and parameters


def stable_seed(*parts: Any) -> int:
  """An int seed from names and numbers, the same in every process and Python run."""
  return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def abstract_params(model: DecoderLM) -> Any:
  """Boxed (logically annotated) abstract parameters of `model`."""
  return jax.eval_shape(boxed_param_init(model), jax.random.key(0))


def unboxed(tree: Any) -> Any:
  return nn.meta.unbox(tree)


# ---------------------------------------------------------------------------------------------
# Sampling the SFT policy


class PolicySampler:
  """One SFT sample per prompt, or K per prompt for `policy_comparisons` (a SampleResponses).

  Every call draws from its own seed, `stable_seed(seed, stream, call number)`, so a sampler made
  with the same (seed, stream) reproduces the same samples.
  """

  def __init__(self, model: DecoderLM, params: Any, tokenizer, sampling: SamplingConfig,
               batch_size: int, ctx: Optional[ShardingContext], seed: int, stream: str):
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.sampling, self.batch_size, self.ctx = sampling, batch_size, ctx
    self.seed, self.stream, self.calls = seed, stream, 0
    self.num_blank = 0  # Responses still blank after MAX_REDRAWS.

  def _generate(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
    self.calls += 1
    return generate_texts(self.model, self.params, self.tokenizer, prompts, self.sampling,
                          seed=stable_seed(self.seed, self.stream, self.calls),
                          batch_size=self.batch_size, shard=self.ctx)

  def texts(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
    """[(text without EOS, finished)], one per prompt; blank texts redrawn (a few times)."""
    out = self._generate(prompts)
    for _ in range(MAX_REDRAWS):
      blank = [i for i, (t, _) in enumerate(out) if not t.strip()]
      if not blank:
        break
      for i, r in zip(blank, self._generate([prompts[i] for i in blank])):
        out[i] = r
    self.num_blank += sum(not t.strip() for t, _ in out)
    return out

  def __call__(self, prompts: Sequence[str], k: int) -> list[list[tuple[str, bool]]]:
    flat = self.texts([p for p in prompts for _ in range(k)])
    return [flat[i * k:(i + 1) * k] for i in range(len(prompts))]


def drop_blank(cmp: world_cmp.Comparison) -> Optional[world_cmp.Comparison]:
  """The comparison without blank responses (ranking order kept); None if < 2 remain."""
  keep = [i for i, t in enumerate(cmp.responses) if t.strip()]
  if len(keep) == len(cmp.responses):
    return cmp
  if len(keep) < 2:
    return None
  new = {old: new for new, old in enumerate(keep)}
  flags = cmp.finished_flags
  return world_cmp.Comparison(cmp.prompt, tuple(cmp.responses[i] for i in keep),
                              tuple(new[i] for i in cmp.ranking if i in new), cmp.group,
                              tuple(flags[i] for i in keep))


# ---------------------------------------------------------------------------------------------
# Cached sampled data


def cached_jsonl(path: str, settings: dict, build: Callable[[], list[dict]]) -> list[dict]:
  """Rows read from `path` if it was written with the same `settings`, else built and written.

  The settings live in `<path>.meta.json`; rows and settings are written atomically (temp file,
  then rename), so an interrupted run never leaves a half-written cache.
  """
  meta_path = path + ".meta.json"
  if os.path.isfile(path) and os.path.isfile(meta_path):
    with open(meta_path) as f:
      saved = json.load(f)
    diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if diff:
      raise ConfigError(f"{path} was sampled with other settings (saved, now): {diff}; use a "
                        "fresh workdir or delete the file")
    _log.info("reusing %s", path)
    return read_jsonl(path)
  rows = build()
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_jsonl(path + ".tmp", rows)
    os.replace(path + ".tmp", path)
    with open(meta_path + ".tmp", "w") as f:
      json.dump(settings, f, indent=2, sort_keys=True)
    os.replace(meta_path + ".tmp", meta_path)
  return rows


class Sft:
  """The SFT model, loaded once on first use: its weights start the RM's trunk, and its policy
  is sampled for policy comparisons and the normalisation (unless those are cached)."""

  def __init__(self, config, ctx: Optional[ShardingContext]):
    self.config, self.ctx = config, ctx
    self._loaded = None

  def load(self):
    if self._loaded is None:
      params, cfg, tokenizer, _, _ = load_model(self.config.init_from)
      runtime = {k: self.config.model[k] for k in RUNTIME_FIELDS}
      cfg = cfg.replace(**{**runtime, "dropout_rate": 0.0})
      model = DecoderLM(cfg, head="lm", shard=self.ctx)
      if self.ctx is not None:
        params = jax.device_put(params, param_shardings(self.ctx, abstract_params(model)))
      self._loaded = (model, params, tokenizer)
    return self._loaded

  def sampler(self, stream: str) -> PolicySampler:
    model, params, tokenizer = self.load()
    rm = self.config.rm
    sampling = SamplingConfig(max_new_tokens=rm.max_new_tokens, eos_id=tokenizer.eos_id,
                              pad_id=tokenizer.pad_id, temperature=rm.temperature)
    return PolicySampler(model, params, tokenizer, sampling, rm.sample_batch_size, self.ctx,
                         self.config.seed, stream)

  def release(self) -> None:
    self._loaded = None  # Frees the policy's weights before training.

  def settings(self) -> dict:
    rm = self.config.rm
    return {"init_from": os.path.abspath(self.config.init_from), "seed": self.config.seed,
            "temperature": rm.temperature, "max_new_tokens": rm.max_new_tokens,
            "sample_batch_size": rm.sample_batch_size}


# ---------------------------------------------------------------------------------------------
# Comparisons


def heldout_world_comparisons(world: world_splits.WorldConfig,
                              sample: Optional[world_cmp.SampleResponses]
                              ) -> list[world_cmp.Comparison]:
  """Comparisons on the world's held-out prompts: static, or of `sample` when given."""
  prompts = world_splits.heldout_prompts(world)
  rng = world_splits.split_rng(world, "rm_heldout_comparisons")  # Not any training stream.
  if sample is None:
    return world_cmp.static_comparisons(prompts, rng)
  return world_cmp.policy_comparisons(prompts, sample, rng)


def world_comparisons(config, workdir: str, sft: Sft
                      ) -> tuple[list[world_cmp.Comparison], list[world_cmp.Comparison], dict]:
  """(train, held-out) InstructWorld comparisons and counts; policy ones cached in workdir."""
  world = inputs.world_config(config.data)
  if world.comparison_source == "static":
    return (world_splits.static_comparisons_for(world),
            heldout_world_comparisons(world, None), {})
  settings = {**sft.settings(), "world": config.data.world.to_dict()}
  stats = {}

  def build(split: str) -> Callable[[], list[dict]]:
    def go():
      t0 = time.time()
      sampler = sft.sampler(f"comparisons_{split}")
      cmps = (world_splits.policy_comparisons_for(world, sampler) if split == "train"
              else heldout_world_comparisons(world, sampler))
      kept = [c for c in map(drop_blank, cmps) if c is not None]
      stats[f"{split}_sampling_s"] = time.time() - t0
      stats[f"{split}_blank_responses"] = sampler.num_blank
      _log.info("sampled %d %s comparisons from the SFT policy in %.1fs (%d blank responses "
                "left out)", len(kept), split, time.time() - t0, sampler.num_blank)
      return [c.to_json() for c in kept]
    return go

  out = [[world_cmp.Comparison.from_json(d) for d in cached_jsonl(
      os.path.join(workdir, COMPARISONS_DIR, f"{split}.jsonl"), settings, build(split))]
         for split in ("train", "heldout")]
  return out[0], out[1], stats


def to_records(cmps: Sequence[world_cmp.Comparison]) -> list[dict]:
  return [c.to_json() for c in cmps]


def labeler_ceiling(cmps: Sequence[world_cmp.Comparison]) -> dict[str, float]:
  """How often the gold utility orders the labelers' ranked pairs as the labelers did.

  The labelers are noisy (Plackett-Luce at temperature 0.1), so even a perfect judge of the gold
  utility disagrees with some of their pairs: this is the ceiling of held-out accuracy. Equal
  utilities count half (no judge can beat a coin flip on them), as identical responses do in
  `evaluate_batches`. Two judges:
    group_utility: the utility of the labeler's own group (a judge that knows who labelled);
    mixed_utility: the group-share-weighted utility (about the best a group-blind RM can do).
  `*_distinct` count only pairs of different responses, like the RM's accuracy_distinct.
  """
  k_max = max(len(c.responses) for c in cmps)
  own = np.zeros((len(cmps), k_max))
  mixed = np.zeros((len(cmps), k_max))
  mask = np.zeros((len(cmps), k_max), bool)
  same = np.zeros((len(cmps), k_max, k_max), bool)
  for n, c in enumerate(cmps):
    gold = gold_answer(c.prompt)
    flags = c.finished_flags
    ranked = [(c.responses[i], flags[i]) for i in c.ranking]  # Best first, as the RM's slots.
    for slot, (text, finished) in enumerate(ranked):
      own[n, slot] = utility(c.group, text, finished, gold)
      mixed[n, slot] = sum(share * utility(g, text, finished, gold)
                           for g, share in GROUP_SHARES.items())
      mask[n, slot] = True
      for other, (text2, _) in enumerate(ranked):
        same[n, slot, other] = text == text2
  out = {}
  for name, u in (("group_utility", own), ("mixed_utility", mixed)):
    every = pairwise_agreement(u, mask, 0.5)
    out[f"{name}_pair_accuracy"] = every["pair_accuracy"]
    out[f"{name}_prompt_accuracy"] = every["prompt_accuracy"]
    out[f"{name}_pair_accuracy_distinct"] = pairwise_agreement(u, mask, 0.5,
                                                               pairs=~same)["pair_accuracy"]
  return out


def comparison_sources(config, workdir: str, sft: Sft) -> tuple[Any, Any, dict]:
  """(train records or source, held-out records or source or None, info) from config.data."""
  data = config.data
  if data.source == "instructworld":
    train, heldout, stats = world_comparisons(config, workdir, sft)
    info = {"comparison_source": data.world.comparison_source, **stats,
            "labeler_ceiling": labeler_ceiling(heldout)}
    return to_records(train), to_records(heldout), info
  train = inputs.lm_records(config, "comparisons", "train")
  heldout = None
  if data.source == "tfds" or data.eval_path:
    heldout = inputs.lm_records(config, "comparisons", "eval")
  else:
    _log.warning("config.data.eval_path is empty: no held-out comparisons, no held-out accuracy")
  return train, heldout, {"comparison_source": data.source}


def comparison_iterator(records, tokenizer, config, k_max: Optional[int], train: bool):
  kw = dict(batch_size=host_batch_size(config.train.batch_size), seq_len=config.data.seq_len,
            max_responses=k_max, on_error=config.data.on_error, adapter=config.data.adapter or None,
            packed_len=packed_len(config) or None,
            pack_bucket=config.data.get("pack_bucket", 64))
  if train:
    return make_comparison_iterator(records, tokenizer, seed=config.seed, **kw)
  return make_comparison_iterator(records, tokenizer, seed=0, num_epochs=1, shuffle=False,
                                  drop_remainder=False, **kw)


def device_batches(host_iter, ctx) -> list[dict]:
  return [to_device_batch({k: b[k] for k in EVAL_KEYS if k in b}, ctx) for b in host_iter]


# ---------------------------------------------------------------------------------------------
# Evaluation and scoring


def evaluate_batches(evaluate: Callable, params, batches: Sequence[dict]) -> dict[str, float]:
  """Held-out loss (per-prompt weighted) and pairwise accuracies over fixed batches.

  accuracy: over all labeler pairs, a pair of identical responses (or equal scores) counting
  half, as in `labeler_ceiling`, so the two compare; accuracy_strict: such pairs count wrong
  (the training metric); accuracy_distinct: only pairs of different responses.
  """
  scores, masks, same, loss_sum, prompts = [], [], [], 0.0, 0.0
  for batch in batches:
    m = jax.device_get(evaluate(params, batch))
    loss_sum += float(m["loss"]) * float(m["num_prompts"])
    prompts += float(m["num_prompts"])
    scores.append(np.asarray(m["scores"]))
    masks.append(np.asarray(m["k_mask"]))
    same.append(np.asarray(m["same"]))
  scores, masks, same = np.concatenate(scores), np.concatenate(masks), np.concatenate(same)
  fair = pairwise_agreement(scores, masks, 0.5, ties=same)
  strict = pairwise_agreement(scores, masks, 0.0)
  distinct = pairwise_agreement(scores, masks, 0.5, pairs=~same)
  valid = scores[masks]
  return {"loss": loss_sum / max(prompts, 1.0), "accuracy": fair["pair_accuracy"],
          "prompt_accuracy": fair["prompt_accuracy"], "accuracy_strict": strict["pair_accuracy"],
          "accuracy_distinct": distinct["pair_accuracy"],
          "identical_pair_fraction": 1.0 - distinct["num_pairs"] / max(fair["num_pairs"], 1),
          "num_pairs": fair["num_pairs"], "num_prompts": fair["num_prompts"],
          "score_mean": float(valid.mean()), "score_std": float(valid.std())}


def text_batches(pairs: Sequence[tuple[str, str]], tokenizer, config, k_max: int,
                 ctx) -> list[dict]:
  """(prompt, response) pairs as RM batches, encoded exactly as comparison responses.

  Independent sequences fill the K_max slots of each row (slot order = input order), so the
  compiled eval step scores them; only `scores` at k_mask are meaningful. Every host holds all
  pairs and feeds its own rows of each global batch, so the global batch keeps input order.
  """
  cfg = EncodeConfig(seq_len=config.data.seq_len)
  seqs = []
  for i, (prompt, response) in enumerate(pairs):
    cmp = DataComparison(prompt=prompt, responses=(response,), ranking=(0,), where=f"sample[{i}]")
    seqs.extend(encode_comparison(cmp, tokenizer, cfg, DataReport(), k_max=1, group_id=-1,
                                  example_id=i)["seqs"])
  pad, b = tokenizer.pad_id, config.train.batch_size
  hb, first = host_batch_size(b), jax.process_index() * host_batch_size(b)
  rows = [batching.comparison_row(seqs[i:i + k_max], k_max, config.data.seq_len, pad, -1)
          for i in range(0, len(seqs), k_max)]
  empty = lambda: batching.empty_comparison_row(k_max, config.data.seq_len, pad)
  batches = []
  for start in range(0, len(rows), b):
    mine = rows[start + first:start + first + hb]
    batch = batching.collate(mine, hb, empty)
    batches.append(to_device_batch({k: batch[k] for k in RM_KEYS}, ctx))
  return batches


def score_texts(evaluate: Callable, params, batches: Sequence[dict]) -> np.ndarray:
  """Scores [N] of the sequences `text_batches` laid out, in input order."""
  out = []
  for batch in batches:
    m = jax.device_get(evaluate(params, batch))
    out.append(np.asarray(m["scores"])[np.asarray(m["k_mask"])])
  return np.concatenate(out)


def norm_samples(config, workdir: str, sft: Sft, prompts: Sequence[str]) -> list[dict]:
  """`config.rm.norm_samples` SFT samples ({"prompt", "response", "finished"}), cached."""
  n = config.rm.norm_samples
  chosen = [prompts[i % len(prompts)] for i in range(n)]  # Cycled when there are fewer.

  def build():
    got = sft.sampler("norm_samples").texts(chosen)
    return [{"prompt": p, "response": t, "finished": f} for p, (t, f) in zip(chosen, got)]
  settings = {**sft.settings(), "prompts_digest": stable_seed(*chosen), "num": n}
  return cached_jsonl(os.path.join(workdir, NORM_SAMPLES_FILE), settings, build)


def unique(items: Sequence[str]) -> list[str]:
  return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------------
# The stage


@dataclasses.dataclass
class RmData:
  """Everything the stage reads, loaded (and sampled) before anything is compiled."""
  train_iter: Any  # BatchIterator of training comparisons.
  eval_batches: list[dict]  # Held-out comparisons on device (all of them).
  norm_samples: list[dict]  # SFT samples the normalisation is computed on.
  norm_batches: list[dict]  # The same, as RM batches.
  k_max: int
  info: dict  # Comparison source, sampling stats, labeler ceiling.


def load_data(config, workdir: str, tokenizer, sft: Sft, ctx) -> RmData:
  train_src, heldout_src, info = comparison_sources(config, workdir, sft)
  train_iter = comparison_iterator(train_src, tokenizer, config, config.data.k_max or None, True)
  k_max = int(train_iter.fingerprint["k_max"])
  eval_iter = (comparison_iterator(heldout_src, tokenizer, config, k_max, False)
               if heldout_src is not None else None)
  eval_batches = device_batches(eval_iter, ctx) if eval_iter is not None else []
  pool = (train_iter if config.rm.norm_prompts == "train" else eval_iter).records
  samples = norm_samples(config, workdir, sft, unique([c.prompt for c in pool]))
  norm_batches = text_batches([(s["prompt"], s["response"]) for s in samples], tokenizer, config,
                              k_max, ctx)
  return RmData(train_iter, eval_batches, samples, norm_batches, k_max, info)


def normalize(evaluate: Callable, params, data: RmData, config) -> tuple[Any, dict]:
  """Folds into the head the map under which the SFT samples score mean 0 (std 1 for
  "gain_bias"); returns (params, what was done)."""
  raw = score_texts(evaluate, params, data.norm_batches)
  gain, bias = 1.0, 0.0
  if config.rm.normalize != "none":
    g, b = reward_normalization(jnp.asarray(raw), mode=config.rm.normalize)
    gain, bias = float(g), float(b)
  params = fold_affine(params, gain, bias)
  after = score_texts(evaluate, params, data.norm_batches)
  return params, {
      "mode": config.rm.normalize, "gain": gain, "bias": bias,
      "reference": f"{len(data.norm_samples)} SFT samples (temperature {config.rm.temperature}) "
                   f"on {config.rm.norm_prompts} prompts ({NORM_SAMPLES_FILE})",
      "num_samples": int(raw.size), "score_mean_before": float(raw.mean()),
      "score_std_before": float(raw.std()), "score_mean_after": float(after.mean()),
      "score_std_after": float(after.std())}


def batch_spec(config, k_max: int) -> dict:
  b, t, packed = config.train.batch_size, config.data.seq_len, packed_len(config)
  slots = lambda dtype: jax.ShapeDtypeStruct((b, k_max), dtype)
  seqs = lambda: jax.ShapeDtypeStruct((b, packed) if packed else (b, k_max, t), jnp.int32)
  return {"tokens": seqs(), "positions": seqs(), "segment_ids": seqs(),
          "k_mask": slots(jnp.bool_), "last_index": slots(jnp.int32)}


def run(config, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and normalises the reward model; returns the results dict."""
  t_start = time.time()
  validate(config, jax.device_count())
  ctx = sharding_context(config)
  sft_cfg, _, _ = read_model_dir_config(config.init_from)
  if config.data.seq_len > sft_cfg.max_seq_len:
    raise ConfigError(f"config.data.seq_len={config.data.seq_len} exceeds the model's "
                      f"max_seq_len {sft_cfg.max_seq_len} ({config.init_from})")
  model_cfg = sft_cfg.replace(**{k: config.model[k] for k in RUNTIME_FIELDS}).validate()
  tokenizer = load_tokenizer(os.path.join(config.init_from, TOKENIZER_DIR))
  sft = Sft(config, ctx)
  # Data first (sampling included): every bad record is reported before the step compiles.
  data = load_data(config, workdir, tokenizer, sft, ctx)

  model = DecoderLM(model_cfg, head="scalar", shard=ctx)
  try:
    start_params = scalar_model_from_lm(sft.load()[1], unboxed(abstract_params(model)))
  except ValueError as e:
    raise ConfigError(f"config.init_from: {e}") from e
  sft.release()
  tx, schedule = make_optimizer(config.optim, config.train.num_steps)
  rng = jax.random.key(config.seed)
  state, shardings = create_train_state(model, tx, jax.random.fold_in(rng, 1), ctx,
                                        params=start_params)
  del start_params
  step_fn = jit_step(make_rm_train_step(model, tx, schedule), ctx, shardings,
                     batch_spec(config, data.k_max))
  # Outputs replicated: every host reads the whole batch's scores (and no host gathers).
  evaluate = jax.jit(make_rm_eval_step(model),
                     out_shardings=ctx.replicated() if ctx is not None else None)
  periodic = data.eval_batches[:config.train.eval_batches]
  eval_fn = (lambda s, step: evaluate_batches(evaluate, s.params, periodic)) if periodic else None
  best = config.train.keep_best_metric or None
  state, summary = run_loop(
      step_fn, state, DeviceIterator(data.train_iter, ctx, RM_KEYS), jax.random.fold_in(rng, 2),
      num_steps=config.train.num_steps, workdir=workdir, log_every=config.train.log_every,
      eval_every=config.train.eval_every if eval_fn else 0, eval_fn=eval_fn,
      save_every=config.train.save_every,
      checkpoint=CheckpointConfig(max_to_keep=config.train.max_to_keep, best_metric=best,
                                  best_mode="max" if best and "accuracy" in best else "min"),
      on_nonfinite=config.train.on_nonfinite, model_config=model_cfg, tokenizer=tokenizer)

  heldout = (evaluate_batches(evaluate, state.params, data.eval_batches) if data.eval_batches
             else {})
  params, normalization = normalize(evaluate, state.params, data, config)
  if heldout:
    heldout["score_mean_normalized"] = normalization["gain"] * heldout["score_mean"] + (
        normalization["bias"])
    heldout["score_std_normalized"] = abs(normalization["gain"]) * heldout["score_std"]
  meta = {"stage": "rm", "steps": int(summary.final_step), "normalization": normalization,
          "heldout_accuracy": heldout.get("accuracy"),
          "comparison_source": data.info.get("comparison_source"),
          "init_from": os.path.abspath(config.init_from)}
  save_model(model_dir(workdir), params, model_cfg, tokenizer, head="scalar", meta=meta)
  steps_done = summary.final_step - summary.start_step
  results = {
      "stage": "rm", "steps": int(summary.final_step), "k_max": data.k_max,
      "num_train_comparisons": len(data.train_iter.records), "heldout": heldout,
      "normalization": normalization, **data.info,
      "train": {"last": summary.train_metrics, "loop_wall_s": summary.wall_time_s,
                "steps_this_run": steps_done, "resumed_from": summary.resumed_from,
                "steps_per_sec_loop": steps_done / max(summary.wall_time_s, 1e-9)},
      "wall_time_s": time.time() - t_start}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=2, sort_keys=True, default=float)
  ceiling = data.info.get("labeler_ceiling", {})
  _log.info("rm finished: held-out pairwise accuracy %s (labeler ceiling %s, group-blind %s); "
            "SFT samples score %.3g -> %.2g after normalisation; model in %s",
            heldout.get("accuracy"), ceiling.get("group_utility_pair_accuracy"),
            ceiling.get("mixed_utility_pair_accuracy"), normalization["score_mean_before"],
            normalization["score_mean_after"], model_dir(workdir))
  return results
