"""PPO-ptx stage: SFT policy + reward model -> RL fine-tuned policy, with alignment-tax evals.

  run(config, workdir):
    1. validate the config (every message names its key) before anything is loaded/compiled;
    2. models: policy and frozen reference from `config.init_from` (SFT model dir), frozen
       reward model from `config.reward_model` (head "scalar"), value model initialised from
       the RM (`config.value_init="reward_model"`, the paper's choice) or from the SFT trunk
       with a zero head ("sft"); dropout is off whatever config.model.dropout_rate says (see
       stages/ppo.py: PPO must be deterministic at fixed weights);
    3. data: prompts (InstructWorld's ppo split or JSONL {"prompt"}), and with ptx_coef > 0
       pretraining text (InstructWorld's pretrain split or JSONL {"text"}) for the ptx term;
    4. `run_loop` over the jitted iteration (rollout + update in one function, state donated;
       the KL controller lives in the state, so checkpoints restore it);
    5. evaluation on held-out prompts: RM score, KL to the SFT policy, correctness against the
       world's gold answers, and the held-out pretraining loss: the alignment-tax numbers,
       for the SFT policy once (the baseline) and for the policy every eval_every iterations;
    6. `<workdir>/model` (policy, head "lm"), `<workdir>/value_model` (head "scalar") and
       `<workdir>/ppo_results.json` (SFT and final evaluation, training summary).

Compiled functions are memoised on everything that shapes them, so running the stage again in
one process (resume in a notebook or a test) does not compile again.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from instructjax import config as config_lib
from instructjax.parallel import xla_options
from instructjax.data import make_lm_iterator, make_prompt_iterator
from instructjax.parallel.distributed import host_batch_size
from instructjax.generation import SamplingConfig
from instructjax.model_io import TOKENIZER_DIR, load_model, read_model_dir_config, save_model
from instructjax.models import DecoderLM, ModelConfig
from instructjax.config import ConfigError
from instructjax.ops import adaptive_kl_controller, fixed_kl_controller
from instructjax.ops.kl import KLController
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import ShardingContext
from instructjax.stages import inputs
from instructjax.stages.device_data import to_device_batch
from instructjax.stages.lm import make_lm_eval_step
from instructjax.stages.lm.run import (LM_KEYS, RUNTIME_FIELDS, fixed_eval_batches,
                                          loop_steps, model_dir, sharding_context)
from instructjax.stages.ppo import (PPOConfig, PPOModels, eval_episodes, make_ppo_iteration)
from instructjax.stages.ppo.state import create_ppo_state, ppo_state_shardings
from instructjax.models.heads import scalar_model_from_lm
from instructjax.tokenizer import load_tokenizer
from instructjax.training import CheckpointConfig, run_loop
from instructjax.world import splits as world_splits
from instructjax.world.correctness import correctness, exact_match, has_courtesy_prefix
from instructjax.world.prompts import gold_answer

PROMPT_KEYS = ("tokens", "segment_ids", "positions")
VALUE_INITS = ("reward_model", "sft")
SOURCES = ("instructworld", "jsonl")
RESULTS_FILE = "ppo_results.json"
VALUE_MODEL_DIR = "value_model"

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Config


def ppo_config(config) -> PPOConfig:
  """The static PPOConfig from config.ppo (validated; errors name config.ppo.<key>)."""
  p = config.ppo
  try:
    return PPOConfig(
        rollout_batch_size=int(p.rollout_batch_size), minibatch_size=int(p.minibatch_size),
        micro_batch_size=int(p.get("micro_batch_size", 0)), epochs=int(p.epochs),
        clip_eps=float(p.clip_eps), value_clip_eps=float(p.value_clip_eps),
        vf_coef=float(p.vf_coef), entropy_coef=float(p.entropy_coef), gamma=float(p.gamma),
        lam=float(p.lam), whiten_rewards=bool(p.whiten_rewards),
        kl_estimator=str(p.kl_estimator), ptx_coef=float(p.ptx_coef),
        no_eos_penalty=float(p.no_eos_penalty), ema_decay=float(p.ema_decay)).validate()
  except ValueError as e:
    raise ConfigError(str(e)) from e


def sampling_config(config, tokenizer, temperature: Optional[float] = None) -> SamplingConfig:
  p = config.ppo
  return SamplingConfig(max_new_tokens=int(p.max_new_tokens), eos_id=tokenizer.eos_id,
                        pad_id=tokenizer.pad_id,
                        temperature=float(p.temperature if temperature is None else temperature),
                        top_k=int(p.top_k), top_p=float(p.top_p))


def kl_controller(config) -> KLController:
  k = config.ppo.kl
  if k.adaptive:
    return adaptive_kl_controller(float(k.init_beta), float(k.target), float(k.horizon))
  return fixed_kl_controller(float(k.init_beta))


def _model_dir_config(path: str, key: str, head: str) -> ModelConfig:
  if not path:
    raise ConfigError(f"config.{key}: required (a model directory with head {head!r})")
  if not os.path.isdir(path):
    raise ConfigError(f"config.{key}: {path} is not a directory")
  try:
    cfg, saved_head, _ = read_model_dir_config(path)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"config.{key}: {e}") from e
  if saved_head != head:
    raise ConfigError(f"config.{key}: {path} holds a model with head {saved_head!r}; PPO needs "
                      f"head {head!r} there")
  return cfg


def validate(config, num_devices: int) -> tuple[PPOConfig, ModelConfig, ModelConfig]:
  """Every PPO check, before any weight is loaded or anything compiled.

  Returns (PPOConfig, policy ModelConfig, reward-model ModelConfig), runtime fields applied.
  """
  if config.stage != "ppo":
    raise ConfigError(f"config.stage: ppo_driver runs 'ppo', not {config.stage!r}")
  mesh_shape = config_lib.validate_common(config, num_devices)
  dp = mesh_shape[0] * mesh_shape[1]
  cfg = ppo_config(config)
  p = config.ppo
  if p.temperature <= 0:
    raise ConfigError(f"config.ppo.temperature: PPO learns from samples; must be > 0, got "
                      f"{p.temperature}")
  try:
    SamplingConfig(max_new_tokens=int(p.max_new_tokens), eos_id=2, pad_id=0,
                   temperature=float(p.temperature), top_k=int(p.top_k), top_p=float(p.top_p))
  except ValueError as e:
    raise ConfigError(f"config.ppo: {e}") from e
  if p.eval_temperature < 0:
    raise ConfigError(f"config.ppo.eval_temperature: must be >= 0 (0 = greedy), got "
                      f"{p.eval_temperature}")
  if p.eval_prompts < 0:
    raise ConfigError(f"config.ppo.eval_prompts: must be >= 0, got {p.eval_prompts}")
  for key in ("rollout_batch_size", "minibatch_size", "micro_batch_size"):
    if p.get(key, 0) % dp:
      raise ConfigError(f"config.ppo.{key}={p[key]} is not divisible by the data-parallel "
                        f"size {dp}")
  if cfg.use_ptx:
    parts = cfg.num_minibatches * cfg.num_micro_batches
    if p.ptx_batch_size < 1 or p.ptx_batch_size % parts:
      raise ConfigError(f"config.ppo.ptx_batch_size={p.ptx_batch_size} must be a positive "
                        f"multiple of the number of minibatches times micro-batches ({parts} = "
                        "rollout_batch_size / micro_batch_size, or / minibatch_size without "
                        "micro-batches)")
    if p.ptx_batch_size % dp:
      raise ConfigError(f"config.ppo.ptx_batch_size={p.ptx_batch_size} is not divisible by the "
                        f"data-parallel size {dp}")
  k = p.kl
  if k.init_beta < 0:
    raise ConfigError(f"config.ppo.kl.init_beta: must be >= 0, got {k.init_beta}")
  if k.adaptive and (k.target <= 0 or k.horizon <= 0):
    raise ConfigError("config.ppo.kl: the adaptive controller needs target > 0 and horizon > 0, "
                      f"got target={k.target}, horizon={k.horizon}")
  if config.value_init not in VALUE_INITS:
    raise ConfigError(f"config.value_init: {config.value_init!r} is not one of {VALUE_INITS}")
  if config.data.source not in SOURCES:
    raise ConfigError(f"config.data.source: {config.data.source!r} is not one of {SOURCES}")
  if config.data.source == "instructworld":
    inputs.world_config(config.data)  # Raises naming config.data.world.
  else:
    if not config.data.train_path:
      raise ConfigError("config.data.train_path: prompts are required when "
                        "config.data.source='jsonl'")
    if cfg.use_ptx and not config.data.ptx_path:
      raise ConfigError("config.data.ptx_path: pretraining texts are required when "
                        f"config.ppo.ptx_coef={cfg.ptx_coef} > 0")
  if config.data.prompt_len < 1:
    raise ConfigError(f"config.data.prompt_len: must be >= 1, got {config.data.prompt_len}")
  for key in ("optim", "value_optim"):
    if config[key].lr <= 0:
      raise ConfigError(f"config.{key}.lr: must be positive, got {config[key].lr}")

  runtime = {k: config.model[k] for k in RUNTIME_FIELDS}
  runtime["dropout_rate"] = 0.0  # See the module docstring.
  if config.model.dropout_rate:
    _log.warning("config.model.dropout_rate=%s is ignored: PPO runs every model without "
                 "dropout", config.model.dropout_rate)
  policy_cfg = _model_dir_config(config.init_from, "init_from", "lm")
  rm_cfg = _model_dir_config(config.reward_model, "reward_model", "scalar")
  policy_cfg, rm_cfg = policy_cfg.replace(**runtime), rm_cfg.replace(**runtime)
  width = config.data.prompt_len + p.max_new_tokens
  for key, mcfg in (("init_from", policy_cfg), ("reward_model", rm_cfg)):
    if width > mcfg.max_seq_len:
      raise ConfigError(f"config.data.prompt_len + config.ppo.max_new_tokens = {width} exceeds "
                        f"the max_seq_len {mcfg.max_seq_len} of config.{key}")
  if (cfg.use_ptx or config.train.eval_batches) and config.data.seq_len > policy_cfg.max_seq_len:
    raise ConfigError(f"config.data.seq_len={config.data.seq_len} exceeds the policy's "
                      f"max_seq_len {policy_cfg.max_seq_len}")
  if policy_cfg.vocab_size != rm_cfg.vocab_size:
    raise ConfigError(f"config.reward_model: vocabulary {rm_cfg.vocab_size} differs from the "
                      f"policy's {policy_cfg.vocab_size} (config.init_from)")
  return cfg, policy_cfg, rm_cfg


# ---------------------------------------------------------------------------------------------
# Data


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


class PPOBatches:
  """{"prompts": [B, P] prompt batch, "ptx": [B_ptx, T] LM batch (when used)} on device.

  Checkpointable: its state is both host iterators' states.
  """

  def __init__(self, prompts, ptx, ctx: Optional[ShardingContext]):
    self.prompts, self.ptx, self.ctx = prompts, ptx, ctx

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    p = next(self.prompts)
    batch = {"prompts": to_device_batch({k: p[k] for k in PROMPT_KEYS}, self.ctx)}
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


def gold_of(record) -> Optional[str]:
  """The gold answer of a prompt record: its "gold" metadata, else InstructWorld's rule."""
  meta = getattr(record, "metadata", None) or {}
  if isinstance(meta.get("gold"), str):
    return meta["gold"]
  try:
    return gold_answer(record.prompt)
  except ValueError:
    return None


# ---------------------------------------------------------------------------------------------
# Compiled functions (memoised)


def _frozen(cfg) -> tuple:
  return tuple(sorted(cfg.to_dict().items()))


@functools.lru_cache(maxsize=8)
def compiled_iteration(cfg: PPOConfig, models: PPOModels, sampling: SamplingConfig,
                       ctx: Optional[ShardingContext], policy_optim: tuple, value_optim: tuple,
                       total_updates: int, kl_static: tuple, prompt_shape: tuple,
                       ptx_shape: Optional[tuple]):
  """(jitted iteration, policy_tx, value_tx, state shardings) for these static settings.

  Like `stages.jit.jit_step` (state donated, shardings from the rules), with the nested
  {"prompts", "ptx"} batch laid out along its leading axes.
  """
  policy_tx, schedule = make_optimizer(ml_collections.ConfigDict(dict(policy_optim)),
                                       total_updates)
  value_tx, _ = make_optimizer(ml_collections.ConfigDict(dict(value_optim)), total_updates)
  iteration = make_ppo_iteration(cfg, models.policy, models.value, models.rm, policy_tx,
                                 value_tx, sampling, shard=ctx, policy_schedule=schedule)
  if ctx is None:
    return xla_options.jit(iteration, donate_argnums=(0,)), policy_tx, value_tx, None
  kl = KLController(beta=jnp.zeros((), jnp.float32), target=kl_static[0], horizon=kl_static[1])
  shardings = ppo_state_shardings(models.policy, models.value, models.rm, policy_tx, value_tx,
                                  kl, cfg.ema_decay > 0, ctx)
  batch_sh = {"prompts": {k: ctx.batch_sharding(len(prompt_shape)) for k in PROMPT_KEYS}}
  if ptx_shape is not None:
    batch_sh["ptx"] = {k: ctx.batch_sharding(len(ptx_shape)) for k in LM_KEYS}
  step = xla_options.jit(iteration, in_shardings=(shardings, batch_sh, ctx.replicated()),
                         out_shardings=(shardings, ctx.replicated()), donate_argnums=(0,))
  return step, policy_tx, value_tx, shardings


@functools.lru_cache(maxsize=8)
def compiled_eval_episodes(models: PPOModels, sampling: SamplingConfig,
                           ctx: Optional[ShardingContext]):
  """jitted (policy, ref, rm params, prompt batch with example_id, rng) -> per-row results.

  Outputs are replicated and carry the batch's example ids, so every host reads every row
  (the rows of a global batch come from all hosts) and computes the same metrics.
  """
  def fn(policy_params, ref_params, rm_params, batch, rng):
    out = eval_episodes(models, sampling, policy_params, ref_params, rm_params, batch, rng,
                        shard=ctx)
    return {**out, "example_id": batch["example_id"]}
  if ctx is None:
    return jax.jit(fn)
  return jax.jit(fn, out_shardings=ctx.replicated())


@functools.lru_cache(maxsize=8)
def compiled_lm_eval(model: DecoderLM):
  return jax.jit(make_lm_eval_step(model))


# ---------------------------------------------------------------------------------------------
# Evaluation


class Evaluator:
  """Held-out evaluation of a policy: episodes on fixed prompts + held-out pretraining loss.

  Every call samples with the same keys, so two policies (or two steps) are compared on the
  same prompts with the same sampling noise.
  """

  def __init__(self, models: PPOModels, sampling: SamplingConfig, tokenizer,
               prompt_batches: Sequence[dict], records: Sequence[Any], num_prompts: int,
               lm_batches: Sequence[dict], ctx: Optional[ShardingContext], seed: int):
    self.episodes = compiled_eval_episodes(models, sampling, ctx)
    self.num_prompts = num_prompts
    self.lm_eval = compiled_lm_eval(models.policy)
    self.tokenizer, self.prompt_batches, self.lm_batches = tokenizer, prompt_batches, lm_batches
    self.golds = [gold_of(r) for r in records]
    self.key = jax.random.fold_in(jax.random.key(seed), 3)

  def __call__(self, policy_params, ref_params, rm_params) -> dict[str, float]:
    out: dict[str, float] = {}
    if self.prompt_batches:
      out.update(self._episodes(policy_params, ref_params, rm_params))
    if self.lm_batches:
      total, tokens = 0.0, 0.0
      for batch in self.lm_batches:
        m = jax.device_get(self.lm_eval(policy_params, batch))
        total += float(m["loss"]) * float(m["tokens"])
        tokens += float(m["tokens"])
      out["pretrain_heldout_loss"] = total / max(tokens, 1.0)
    return out

  def _episodes(self, policy_params, ref_params, rm_params) -> dict[str, float]:
    cols = {k: [] for k in ("score", "kl", "length", "finished", "correct", "exact", "prefix")}
    for i, batch in enumerate(self.prompt_batches):
      m = jax.device_get(self.episodes(policy_params, ref_params, rm_params, batch,
                                       jax.random.fold_in(self.key, i)))
      for r, ex in enumerate(m["example_id"]):
        if not 0 <= ex < self.num_prompts:
          continue  # A batch-padding row, or beyond the prompts evaluated.
        text = self.tokenizer.decode(m["response_tokens"][r])
        finished = bool(m["finished"][r])
        cols["score"].append(float(m["score"][r]))
        cols["kl"].append(float(m["kl"][r]))
        cols["length"].append(int(m["lengths"][r]))
        cols["finished"].append(finished)
        cols["prefix"].append(has_courtesy_prefix(text))
        gold = self.golds[ex]
        if gold is not None:
          cols["correct"].append(correctness(text, finished, gold))
          cols["exact"].append(exact_match(text, finished, gold))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")
    out = {"score": mean(cols["score"]), "kl": mean(cols["kl"]),
           "response_length": mean(cols["length"]), "eos_fraction": mean(cols["finished"]),
           "courtesy_prefix_fraction": mean(cols["prefix"]), "num_prompts": len(cols["score"])}
    if cols["correct"]:
      out.update(correctness=mean(cols["correct"]), exact_match=mean(cols["exact"]))
    return out


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
                            shuffle=False, drop_remainder=False, on_error=config.data.on_error,
                            log=False)
  n = min(n, len(it.records))
  batches = []
  for b in it:
    if len(batches) == -(-n // global_batch):
      break
    batches.append(to_device_batch({k: b[k] for k in PROMPT_KEYS + ("example_id",)}, ctx))
  return batches, it.records, n


def _eval_params(state):
  return state.policy_params if state.ema_params is None else state.ema_params


# ---------------------------------------------------------------------------------------------
# The stage


def load_weights(config):
  """(policy params, RM params, value params, tokenizer), checking the two tokenizers agree."""
  policy_params, _, tokenizer, _, _ = load_model(config.init_from)
  rm_params, _, rm_tokenizer, _, _ = load_model(config.reward_model)
  same = (tokenizer.vocab_size == rm_tokenizer.vocab_size
          and tokenizer.eos_id == rm_tokenizer.eos_id and tokenizer.pad_id == rm_tokenizer.pad_id)
  if not same:
    raise ConfigError("config.reward_model: its tokenizer differs from the policy's "
                      "(config.init_from); the RM must read the policy's tokens")
  if config.value_init == "reward_model":
    value_params = rm_params
  else:
    abstract = jax.eval_shape(lambda: rm_params)
    try:
      value_params = scalar_model_from_lm(policy_params, abstract)
    except ValueError as e:
      raise ConfigError(f"config.value_init='sft': {e}") from e
  return policy_params, rm_params, value_params, tokenizer


def run(config, workdir: str) -> dict[str, Any]:
  """Trains the policy with PPO(-ptx); returns the results dict (also in ppo_results.json)."""
  t_start = time.time()
  cfg, policy_cfg, rm_cfg = validate(config, jax.device_count())
  ctx = sharding_context(config)
  tokenizer = load_tokenizer(os.path.join(config.init_from, TOKENIZER_DIR))
  models = PPOModels(policy=DecoderLM(policy_cfg, head="lm", shard=ctx),
                     value=DecoderLM(rm_cfg, head="scalar", shard=ctx),
                     rm=DecoderLM(rm_cfg, head="scalar", shard=ctx))
  sampling = sampling_config(config, tokenizer)
  p_len = int(config.data.prompt_len)

  # Data first: every bad record is reported before anything is compiled.
  check_world_prompt_len(config, tokenizer)
  # Batch sizes in the config are global; each host feeds its slice.
  prompts_iter = make_prompt_iterator(
      prompt_records(config, "train"), tokenizer,
      batch_size=host_batch_size(cfg.rollout_batch_size, "ppo.rollout_batch_size"),
      prompt_len=p_len, seed=config.seed, on_error=config.data.on_error)
  ptx_iter = None
  if cfg.use_ptx:
    ptx_iter = make_lm_iterator(
        ptx_records(config, "train"), tokenizer,
        batch_size=host_batch_size(int(config.ppo.ptx_batch_size), "ppo.ptx_batch_size"),
        seq_len=config.data.seq_len, seed=config.seed + 1, pack=config.data.pack,
        mode="pretrain", on_error=config.data.on_error)
  eval_prompts, eval_records, num_eval = eval_prompt_batches(prompt_records(config, "eval"),
                                                             tokenizer, config, ctx)
  heldout_text = ptx_records(config, "eval")
  lm_batches = (fixed_eval_batches(heldout_text, tokenizer, config, "pretrain", ctx)
                if heldout_text is not None and config.train.eval_batches else [])

  total_updates = config.train.num_steps * cfg.epochs * cfg.num_minibatches
  kl = kl_controller(config)
  ptx_shape = (int(config.ppo.ptx_batch_size), config.data.seq_len) if cfg.use_ptx else None
  step_fn, policy_tx, value_tx, _ = compiled_iteration(
      cfg, models, sampling, ctx, _frozen(config.optim), _frozen(config.value_optim),
      total_updates, (kl.target, kl.horizon), (cfg.rollout_batch_size, p_len), ptx_shape)

  policy_params, rm_params, value_params, _ = load_weights(config)
  state, _ = create_ppo_state(models.policy, models.value, models.rm, policy_tx, value_tx,
                              policy_params=policy_params, value_params=value_params,
                              rm_params=rm_params, kl=kl, ema=cfg.ema_decay > 0, ctx=ctx)
  del policy_params, rm_params, value_params

  eval_sampling = sampling_config(config, tokenizer, temperature=config.ppo.eval_temperature)
  evaluator = Evaluator(models, eval_sampling, tokenizer, eval_prompts, eval_records,
                        num_eval, lm_batches, ctx, config.seed)
  t0 = time.time()
  sft_eval = evaluator(state.ref_params, state.ref_params, state.rm_params)
  _log.info("SFT policy on held-out prompts (%.1fs): %s", time.time() - t0, sft_eval)
  eval_fn = lambda s, step: evaluator(_eval_params(s), s.ref_params, s.rm_params)

  state, summary = run_loop(
      step_fn, state, PPOBatches(prompts_iter, ptx_iter, ctx),
      jax.random.fold_in(jax.random.key(config.seed), 2), num_steps=loop_steps(config),
      workdir=workdir, log_every=config.train.log_every, eval_every=config.train.eval_every,
      eval_fn=eval_fn, save_every=config.train.save_every,
      checkpoint=CheckpointConfig(max_to_keep=config.train.max_to_keep,
                                  best_metric=config.train.keep_best_metric or None,
                                  best_mode="min" if "loss" in config.train.keep_best_metric
                                  else "max"),
      on_nonfinite=config.train.on_nonfinite, model_config=policy_cfg, tokenizer=tokenizer,
      progress_metrics=("score", "kl", "beta"))
  final_eval = summary.eval_metrics or evaluator(_eval_params(state), state.ref_params,
                                                 state.rm_params)

  done = summary.final_step - summary.start_step
  loop_s = summary.wall_time_s
  results = {
      "stage": "ppo", "steps": int(summary.final_step), "ptx_coef": cfg.ptx_coef,
      "kl_beta": float(jax.device_get(state.kl.beta)), "sft_eval": sft_eval,
      "final_eval": final_eval,
      "train": {"last": summary.train_metrics, "loop_wall_s": loop_s, "steps_this_run": done,
                "iterations_per_sec": done / max(loop_s, 1e-9),
                "resumed_from": summary.resumed_from,
                "skipped_updates": summary.skipped_updates,
                "stop_reason": summary.stop_reason},
      "init_from": os.path.abspath(config.init_from),
      "reward_model": os.path.abspath(config.reward_model)}
  meta = {"stage": "ppo", "steps": int(summary.final_step), "ptx_coef": cfg.ptx_coef,
          "ema": cfg.ema_decay > 0, "init_from": results["init_from"],
          "reward_model": results["reward_model"],
          "heldout_score": final_eval.get("score"), "heldout_kl": final_eval.get("kl")}
  save_model(model_dir(workdir), _eval_params(state), policy_cfg, tokenizer, head="lm",
             meta=meta)
  save_model(os.path.join(workdir, VALUE_MODEL_DIR), state.value_params, rm_cfg, tokenizer,
             head="scalar", meta={**meta, "stage": "ppo_value"})
  results["wall_time_s"] = time.time() - t_start
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=2, sort_keys=True, default=float)
  _log.info("ppo finished in %.0fs: held-out score %.3f -> %.3f, KL %.2f, correctness %s -> %s, "
            "pretraining loss %s -> %s; model in %s", results["wall_time_s"],
            sft_eval.get("score", float("nan")), final_eval.get("score", float("nan")),
            final_eval.get("kl", float("nan")), sft_eval.get("correctness"),
            final_eval.get("correctness"), sft_eval.get("pretrain_heldout_loss"),
            final_eval.get("pretrain_heldout_loss"), model_dir(workdir))
  return results
