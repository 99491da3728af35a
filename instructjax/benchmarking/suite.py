"""The benchmarks: LM/SFT step, RM step, rollout generation, PPO update and PPO-ptx iteration.

Each benchmark builds its inputs (random weights and tokens: speed does not depend on the
values), compiles the very function the stage runs (`make_lm_train_step` + `jit_step`,
`make_rm_train_step`, the KV-cache sampler, `ppo_update`, `stages.ppo.jit_iteration` of
`make_ppo_iteration`), times it after warm-up and returns a plain dict for JSON. Rollouts run with EOS disabled (an
id outside the vocabulary), so every row generates exactly `new_tokens` tokens and the work is
the same from run to run.

The PPO iteration is also split into phases, each a separately jitted function of the same
code: sampling (the sampler `rollout` calls), recompute (the log-prob/value/score forwards of
`rollout`, chunked like it), update (`rewards_and_advantages` + `ppo_update`). Their sum
exceeds the fused iteration a little (three dispatches instead of one, no fusion across the
phase boundaries).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from instructjax import config as config_lib
from instructjax.parallel import memory, xla_options
from instructjax.benchmarking import checks, flops
from instructjax.benchmarking.hardware import DevicePeak, peak_memory_bytes
from instructjax.benchmarking.timing import (compile_seconds, time_calls, time_stateful,
                                             time_with_setup)
from instructjax.generation import SamplingConfig, make_prefill_and_decode, make_sampler
from instructjax.models import DecoderLM, ModelConfig, positions_from_mask
from instructjax.ops import adaptive_kl_controller
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import ShardingContext
from instructjax.stages import ppo
from instructjax.stages.jit import batch_shardings, jit_step
from instructjax.stages.lm import make_lm_train_step
from instructjax.stages.rm import make_rm_train_step
from instructjax.training.state import create_train_state, init_params

PAD = 0


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every benchmark shares: the model, the mesh, the timing policy and the device peak."""
  cfg: ModelConfig
  ctx: Optional[ShardingContext]
  peak: DevicePeak
  reps: int = 5
  warmup: int = 2
  seed: int = 0

  @property
  def num_devices(self) -> int:
    return 1 if self.ctx is None else self.ctx.mesh.size

  def key(self, i: int = 0) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.seed), i)


# ------------------------------------------------------------------------------------ inputs


def lm_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A full [batch, seq] LM batch of random tokens (ids >= 3: no PAD/BOS/EOS), every target
  counted: the SFT step costs the same whatever its loss mask holds."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (batch, seq + 1)).astype(np.int32)
  return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
          "segment_ids": np.ones((batch, seq), np.int32),
          "loss_mask": np.ones((batch, seq), bool)}


def rm_batch(vocab: int, prompts: int, k: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A comparison batch: `prompts` x K full-length responses ([prompts, K, seq])."""
  rng = np.random.default_rng(seed)
  shape = (prompts, k, seq)
  return {"tokens": rng.integers(3, vocab, shape).astype(np.int32),
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), shape).copy(),
          "segment_ids": np.ones(shape, np.int32), "k_mask": np.ones((prompts, k), bool),
          "last_index": np.full((prompts, k), seq - 1, np.int32)}


def prompt_batch(vocab: int, batch: int, width: int, seed: int = 0,
                 min_len: Optional[int] = None) -> dict[str, np.ndarray]:
  """Left-padded prompts [batch, width] of random lengths in [min_len, width]."""
  rng = np.random.default_rng(seed)
  min_len = width if min_len is None else min_len
  tokens = np.full((batch, width), PAD, np.int32)
  seg = np.zeros((batch, width), np.int32)
  for r in range(batch):
    n = int(rng.integers(min_len, width + 1))
    tokens[r, width - n:] = rng.integers(3, vocab, n)
    seg[r, width - n:] = 1
  return {"tokens": tokens, "segment_ids": seg,
          "positions": np.asarray(positions_from_mask(jnp.asarray(seg)))}


def place(setup: Setup, batch: dict) -> dict:
  """The batch on device, split along its leading axis over (data, fsdp)."""
  if setup.ctx is None:
    return jax.tree.map(jnp.asarray, batch)
  return jax.device_put(batch, batch_shardings(setup.ctx, batch))


def optimizer():
  tx, schedule = make_optimizer(ml_collections.ConfigDict(config_lib.optim_config()), 1000)
  return tx, schedule


# ------------------------------------------------------------------------------------ helpers


def throughput(setup: Setup, seconds: float, tokens: float, model_flops: float) -> dict:
  per_s = model_flops / seconds
  return {"tokens_per_s": tokens / seconds,
          "tokens_per_s_per_device": tokens / seconds / setup.num_devices,
          "model_flops": model_flops, "model_flops_per_s_per_device": per_s / setup.num_devices,
          "mfu": per_s / setup.num_devices / setup.peak.flops}


def memory_entry(compiled, plan_bytes: Optional[int] = None) -> dict:
  """Device peak so far (None where the backend has no stats), XLA's own analysis, a plan."""
  return {"device_peak_bytes": peak_memory_bytes(), "xla": checks.memory_analysis(compiled),
          "plan_bytes": plan_bytes}


# --------------------------------------------------------------------------------- LM step


def bench_lm_step(setup: Setup, batch: int, seq: int) -> dict:
  """The LM/SFT train step (`make_lm_train_step` under `jit_step`, state donated)."""
  model = DecoderLM(setup.cfg, shard=setup.ctx)
  tx, schedule = optimizer()
  state, shardings = create_train_state(model, tx, setup.key(), setup.ctx)
  data = place(setup, lm_batch(setup.cfg.vocab_size, batch, seq, setup.seed))
  step = jit_step(make_lm_train_step(model, tx, schedule), setup.ctx, shardings, data)
  compiled, compile_s = compile_seconds(step, state, data, setup.key(1))
  plan_bytes = None
  if setup.ctx is not None:
    plan_bytes = memory.plan(model, tx, setup.ctx, batch, seq).per_device_total
  donated = checks.donation(compiled, state)
  timing, state = time_stateful(step, state, (data, setup.key(2)), setup.reps, setup.warmup)
  out = {"name": "LM/SFT step", "shape": f"[{batch}, {seq}]", "compile_s": compile_s,
         "time": timing.to_dict(), "donation": donated,
         **throughput(setup, timing.median, batch * seq, flops.train_flops(setup.cfg, batch, seq)),
         "memory": memory_entry(compiled, plan_bytes)}
  return out


# --------------------------------------------------------------------------------- RM step


def bench_rm_step(setup: Setup, batch: int, seq: int, k: int = 2) -> dict:
  """The reward-model step on batch // k prompts with k responses each (batch rows)."""
  prompts = max(batch // k, 1)
  model = DecoderLM(setup.cfg, head="scalar", shard=setup.ctx)
  tx, schedule = optimizer()
  state, shardings = create_train_state(model, tx, setup.key(), setup.ctx)
  data = place(setup, rm_batch(setup.cfg.vocab_size, prompts, k, seq, setup.seed))
  step = jit_step(make_rm_train_step(model, tx, schedule), setup.ctx, shardings, data)
  compiled, compile_s = compile_seconds(step, state, data, setup.key(1))
  timing, state = time_stateful(step, state, (data, setup.key(2)), setup.reps, setup.warmup)
  rows = prompts * k
  return {"name": "RM step", "shape": f"[{prompts}x{k}, {seq}]", "compile_s": compile_s,
          "time": timing.to_dict(),
          **throughput(setup, timing.median, rows * seq,
                       flops.train_flops(setup.cfg, rows, seq, "scalar")),
          "memory": memory_entry(compiled)}


# --------------------------------------------------------------------------------- rollout


def fixed_length_sampling(cfg: ModelConfig, new_tokens: int,
                          temperature: float = 1.0) -> SamplingConfig:
  """Sampling with EOS outside the vocabulary: every row generates exactly new_tokens."""
  return SamplingConfig(max_new_tokens=new_tokens, eos_id=cfg.vocab_size, pad_id=PAD,
                        temperature=temperature)


def bench_rollout(setup: Setup, batch: int, prompt_len: int, new_tokens: int,
                  name: str = "rollout") -> dict:
  """Prefill and decode of the KV-cache sampler, with the weights in the compute dtype.

  The sampler's two halves are timed as separately jitted functions of the same code
  (`make_prefill_and_decode`): prefill = one forward over [batch, prompt_len] into a cache of
  prompt_len + new_tokens slots (+ sampling column 0); decode = the on-device while loop of
  new_tokens - 1 single-token steps. (`make_sampler` runs both in one jit; the PPO phases
  time it whole.)
  """
  cfg = setup.cfg
  model = DecoderLM(cfg, shard=setup.ctx)
  params, _ = init_params(model, setup.key(), setup.ctx)
  params = jax.tree.map(lambda x: x.astype(cfg.jnp_dtype), params)
  prompts = place(setup, prompt_batch(cfg.vocab_size, batch, prompt_len, setup.seed))
  slots = prompt_len + new_tokens
  sampling = fixed_length_sampling(cfg, new_tokens)
  prefill, decode = make_prefill_and_decode(model, sampling, setup.ctx)
  args = (params, prompts["tokens"], prompts["segment_ids"], setup.key(1))
  prefill_compiled, prefill_compile = compile_seconds(prefill, *args)
  state = prefill(*args)
  decode_compiled, decode_compile = compile_seconds(decode, params, state, setup.key(1))

  t_prefill = time_calls(lambda: prefill(*args), setup.reps, setup.warmup)
  t_decode = time_with_setup(lambda: prefill(*args), lambda s: decode(params, s, setup.key(1)),
                             setup.reps, setup.warmup)
  steps = int(decode(params, prefill(*args), setup.key(1)).step)  # Single-token forwards.
  decode_s = t_decode.median
  step_s = decode_s / max(steps, 1)
  step_bytes = flops.decode_step_bytes(cfg, batch, slots)
  bw = step_bytes / step_s
  hbm = setup.peak.hbm_bytes_per_s
  d = setup.num_devices
  return {
      "name": name, "shape": f"[{batch}, {prompt_len}+{new_tokens}]",
      "compile_s": {"prefill": prefill_compile, "decode": decode_compile},
      "prefill": {"time": t_prefill.to_dict(), "tokens": batch * prompt_len,
                  "tokens_per_s": batch * prompt_len / t_prefill.median,
                  "tokens_per_s_per_device": batch * prompt_len / t_prefill.median / d,
                  "mfu": flops.forward_flops(cfg, batch, prompt_len) / t_prefill.median / d
                  / setup.peak.flops},
      "decode": {"time": t_decode.to_dict(), "seconds": decode_s, "steps": steps,
                 "step_s": step_s,
                 "tokens_per_s": batch * steps / decode_s,
                 "tokens_per_s_per_device": batch * steps / decode_s / d,
                 "bytes_per_step": step_bytes, "bytes_per_s": bw,
                 "hbm_roofline_fraction": (bw / d / hbm) if hbm else None},
      "checks": {"host_transfers": (checks.host_transfers(prefill_compiled)
                                    + checks.host_transfers(decode_compiled)),
                 "while_loop": checks.has_while_loop(decode_compiled),
                 "cache_copies": checks.copies(decode_compiled,
                                               watch=(state.cache.k,))["state_shaped"],
                 "cache_buffers": checks.cache_buffers(decode_compiled, state.cache.k.shape)},
      "memory": memory_entry(decode_compiled)}


# ------------------------------------------------------------------------------- log-probs


def bench_logprobs(setup: Setup, batch: int, prompt_len: int, new_tokens: int, chunk: int,
                   vocab: Optional[int] = None) -> dict:
  """Response log-probabilities two ways, forward (the rollout's recompute) and forward +
  backward (the PPO update), at `vocab` (default: the preset's):

  full logits: the model's [B, P+N, V] float32 logits, sliced to the response, then
    `token_logprobs` (what stages/ppo.py does);
  from hidden: the final-norm hidden states of the response positions times the head, chunk
    by chunk (`DecoderLM(return_hidden=True)` + `ops.logprobs.logprobs_from_hidden`): the
    head runs on N positions instead of P+N and no [B, T, V] array exists.
  Reports time and XLA's temporary memory of each compiled function.
  """
  from instructjax.models import lm_head_weight  # pylint: disable=import-outside-toplevel
  from instructjax.ops.logprobs import logprobs_from_hidden  # pylint: disable=import-outside-toplevel
  cfg = setup.cfg if not vocab else setup.cfg.replace(vocab_size=vocab)
  model = DecoderLM(cfg, shard=setup.ctx)
  params, _ = init_params(model, setup.key(), setup.ctx)
  p, n = prompt_len, new_tokens
  data = place(setup, lm_batch(cfg.vocab_size, batch, p + n, setup.seed))
  tok, pos, seg = data["tokens"], data["positions"], data["segment_ids"]
  weights = jnp.asarray(np.random.default_rng(setup.seed).normal(size=(batch, n)), jnp.float32)

  def full(params):
    return ppo.response_logprobs(model, params, tok, pos, seg, p, 1.0)

  def hidden(params):
    h, _ = model.apply({"params": params}, tok, pos, seg, return_hidden=True)
    h = jax.lax.slice_in_dim(h, p - 1, p - 1 + n, axis=1)
    return logprobs_from_hidden(h, lm_head_weight(cfg, params), tok[:, p:], 1.0, chunk=chunk)

  out = {"name": f"response log-probs, V={cfg.vocab_size}",
         "shape": f"[{batch}, {p}+{n}] chunk={chunk}", "vocab": cfg.vocab_size, "chunk": chunk}
  for name, fn in (("full_logits", full), ("from_hidden", hidden)):
    for mode, f in (("forward", fn),
                    ("forward_backward", jax.grad(lambda q, fn=fn: jnp.sum(fn(q) * weights)))):
      jitted = jax.jit(f)
      compiled, compile_s = compile_seconds(jitted, params)
      t = time_calls(lambda: jitted(params), setup.reps, setup.warmup)
      mem = checks.memory_analysis(compiled) or {}
      out[f"{name}/{mode}"] = {"time": t.to_dict(), "compile_s": compile_s,
                               "temp_bytes": mem.get("temp_bytes")}
  a, b = full(params), hidden(params)
  out["max_abs_diff"] = float(jnp.max(jnp.abs(a - b)))
  return out


# --------------------------------------------------------------------------------------- PPO


@dataclasses.dataclass(frozen=True)
class PPOShape:
  batch: int  # rollout_batch_size
  minibatch: int
  epochs: int
  prompt_len: int
  new_tokens: int
  ptx_coef: float
  ptx_batch: int
  ptx_seq: int
  micro_batch: int = 0  # Rows per forward/backward pass (0: the minibatch).

  def config(self) -> ppo.PPOConfig:
    return ppo.PPOConfig(rollout_batch_size=self.batch, minibatch_size=self.minibatch,
                         micro_batch_size=self.micro_batch, epochs=self.epochs,
                         ptx_coef=self.ptx_coef).validate()


def score_rollout(models: ppo.PPOModels, pcfg: ppo.PPOConfig, sampling: SamplingConfig, state,
                  tokens, segment_ids, finished, prompt_len: int) -> dict:
  """The recompute phase of `ppo.rollout` (`ppo.score_sequences`) on sampled rows."""
  return ppo.score_sequences(models, pcfg, sampling.logprob_temperature, state, tokens,
                             positions_from_mask(segment_ids), segment_ids, prompt_len,
                             finished, sampling.eos_id)


def ppo_setup(setup: Setup, shape: PPOShape):
  """(models, sampling, jitted iteration, policy_tx, value_tx, state, batch)."""
  cfg = setup.cfg
  pcfg = shape.config()
  models = ppo.PPOModels(policy=DecoderLM(cfg, shard=setup.ctx),
                         value=DecoderLM(cfg, head="scalar", shard=setup.ctx),
                         rm=DecoderLM(cfg, head="scalar", shard=setup.ctx))
  sampling = fixed_length_sampling(cfg, shape.new_tokens)
  optim = ml_collections.ConfigDict(config_lib.optim_config(lr=1e-5, warmup_steps=0,
                                                            decay="constant"))
  kl = adaptive_kl_controller(0.05, 2.0, 1000.0)
  policy_tx, schedule = make_optimizer(optim, 1000)
  value_tx, _ = make_optimizer(optim, 1000)
  policy_params, _ = init_params(models.policy, setup.key(10), setup.ctx)
  value_params, _ = init_params(models.value, setup.key(11), setup.ctx)
  rm_params, _ = init_params(models.rm, setup.key(12), setup.ctx)
  state, shardings = ppo.create_ppo_state(
      models.policy, models.value, models.rm, policy_tx, value_tx, policy_params=policy_params,
      value_params=value_params, rm_params=rm_params, kl=kl, ctx=setup.ctx)
  # Compiled as the stage compiles it (stages/ppo/run.py).
  iteration = ppo.jit_iteration(
      ppo.make_ppo_iteration(pcfg, models.policy, models.value, models.rm, policy_tx, value_tx,
                             sampling, shard=setup.ctx, policy_schedule=schedule),
      setup.ctx, shardings, pcfg.use_ptx)
  prompts = prompt_batch(cfg.vocab_size, shape.batch, shape.prompt_len, setup.seed,
                         min_len=max(1, shape.prompt_len // 2))
  batch = {"prompts": place(setup, prompts)}
  if pcfg.use_ptx:
    batch["ptx"] = place(setup, lm_batch(cfg.vocab_size, shape.ptx_batch, shape.ptx_seq,
                                         setup.seed + 1))
  return pcfg, models, sampling, iteration, policy_tx, value_tx, state, batch


def bench_ppo(setup: Setup, shape: PPOShape, phases: bool = True,
              recompile_check: bool = True) -> dict:
  """The whole PPO(-ptx) iteration as the driver compiles it, its phases, and the update."""
  cfg = setup.cfg
  pcfg, models, sampling, iteration, policy_tx, value_tx, state, batch = ppo_setup(setup, shape)
  temperature = sampling.logprob_temperature
  b, p, n = shape.batch, shape.prompt_len, shape.new_tokens
  seq = p + n
  ptx_rows = shape.ptx_batch if pcfg.use_ptx else 0

  compiled, compile_s = compile_seconds(iteration, state, batch, setup.key(1))
  donated = checks.donation(compiled, state)
  copies = checks.copies(compiled, watch=state)
  host = checks.host_transfers(compiled)
  timing, state = time_stateful(iteration, state, (), setup.reps, setup.warmup,
                                vary=lambda i: (batch, setup.key(100 + i)))
  gen_flops = flops.forward_flops(cfg, b, seq)
  score_flops = flops.ppo_score_flops(cfg, cfg, cfg, b, seq)
  update_flops = flops.ppo_update_flops(cfg, cfg, b, seq, shape.epochs, ptx_rows, shape.ptx_seq)
  total_flops = gen_flops + score_flops + update_flops
  result = {
      "name": "PPO-ptx iteration" if pcfg.use_ptx else "PPO iteration",
      "shape": f"B={b} [{p}+{n}] mb={shape.minibatch} micro={pcfg.micro_batch} "
               f"epochs={shape.epochs} "
               f"ptx={shape.ptx_coef}" + (f" [{shape.ptx_batch}, {shape.ptx_seq}]"
                                          if pcfg.use_ptx else ""),
      "compile_s": compile_s, "time": timing.to_dict(),
      "episodes_per_s": b / timing.median,
      **throughput(setup, timing.median, b * seq, total_flops),
      "checks": {"donation": donated, "copies": copies, "host_transfers": host},
      "memory": memory_entry(compiled)}

  if recompile_check:
    # New prompts of other real lengths (same width P): the driver's batches always have
    # this shape, so the iteration must not compile again.
    for i in range(2):
      other = {"prompts": place(setup, prompt_batch(cfg.vocab_size, b, p, setup.seed + 7 + i,
                                                    min_len=1))}
      if "ptx" in batch:
        other["ptx"] = batch["ptx"]
      state, _ = iteration(state, other, setup.key(200 + i))
    jax.block_until_ready(state)
    result["checks"]["compilations_after_new_prompts"] = int(iteration._cache_size())

  if phases:
    result["phases"], result["update"] = _ppo_phases(setup, shape, pcfg, models, sampling,
                                                     policy_tx, value_tx, state, batch,
                                                     temperature, update_flops)
    result["phase_sum_s"] = sum(v["time"]["median_s"] for v in result["phases"].values())
  return result


def _ppo_phases(setup, shape, pcfg, models, sampling, policy_tx, value_tx, state, batch,
                temperature, update_flops):
  prompts = batch["prompts"]
  p = shape.prompt_len
  # Compiled as the stage's iteration is (xla_options), so the phases add up to it.
  sampler = make_sampler(models.policy, sampling, setup.ctx)
  sample = xla_options.jit(lambda *args: sampler(*args))
  score = xla_options.jit(functools.partial(score_rollout, models, pcfg, sampling),
                          static_argnums=(4,))
  full_rollout = xla_options.jit(functools.partial(ppo.rollout, models, sampling, pcfg,
                                                   shard=setup.ctx))

  def update(state, ro, ptx, rng):
    adv = ppo.rewards_and_advantages(pcfg, ro, state.kl.beta)
    return ppo.ppo_update(models, pcfg, policy_tx, value_tx, temperature, state, ro, adv, ptx,
                          rng)

  update = xla_options.jit(update, donate_argnums=(0,))
  sargs = (state.policy_params, prompts["tokens"], prompts["segment_ids"], setup.key(3))
  _, sample_compile = compile_seconds(sample, *sargs)
  out = sample(*sargs)
  _, score_compile = compile_seconds(score, state, out.tokens, out.segment_ids, out.finished,
                                     p)
  ro = full_rollout(state, prompts, setup.key(3))
  ptx = batch.get("ptx")
  _, update_compile = compile_seconds(update, state, ro, ptx, setup.key(4))

  t_sample = time_calls(lambda: sample(*sargs), setup.reps, setup.warmup)
  t_score = time_calls(lambda: score(state, out.tokens, out.segment_ids, out.finished, p),
                       setup.reps, setup.warmup)
  t_update, state = time_stateful(update, state, (ro, ptx, setup.key(4)), setup.reps,
                                  setup.warmup)
  b, seq = shape.batch, p + shape.new_tokens
  phases = {
      "sampling": {"time": t_sample.to_dict(), "compile_s": sample_compile},
      "recompute": {"time": t_score.to_dict(), "compile_s": score_compile},
      "update": {"time": t_update.to_dict(), "compile_s": update_compile},
  }
  ptx_tokens = (shape.ptx_batch * shape.ptx_seq) if pcfg.use_ptx else 0
  upd = {"name": "PPO update", "shape": f"{shape.epochs} epochs x {pcfg.num_minibatches} "
                                        f"minibatches of [{shape.minibatch}, {seq}] "
                                        f"(micro-batches of {pcfg.micro_batch})",
         "compile_s": update_compile, "time": t_update.to_dict(),
         **throughput(setup, t_update.median, shape.epochs * (b * seq + ptx_tokens),
                      update_flops)}
  return phases, upd


# ------------------------------------------------------------------------------------ all


BENCHMARKS = ("lm_step", "rm_step", "rollout", "decode_b1", "ppo", "logprobs")


def run_all(setup: Setup, batch: int, seq: int, shape: PPOShape, decode_batch: int = 1,
            only: Sequence[str] = BENCHMARKS, config: Optional[dict] = None,
            ppo_phases: bool = True, logprob_vocab: Optional[int] = None,
            logprob_chunk: int = 32, log=print) -> dict:
  """Runs the selected benchmarks; returns the JSON-able result (see report.benchmark_markdown).
  """
  from instructjax.benchmarking.hardware import host_info  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  unknown = sorted(set(only) - set(BENCHMARKS))
  if unknown:
    raise ValueError(f"unknown benchmarks {unknown}; known: {BENCHMARKS}")
  res = {"schema": 1, "config": dict(config or {}), "host": host_info(),
         "peak": setup.peak.to_dict(), "benchmarks": {}, "compile_s": {}, "memory": {},
         "checks": {}}
  res["config"].update(model=setup.cfg.to_dict(), num_params=setup.cfg.num_params(),
                       reps=setup.reps, warmup=setup.warmup, batch=batch, seq=seq,
                       decode_batch=decode_batch, ppo=dataclasses.asdict(shape))
  b = res["benchmarks"]
  if "lm_step" in only:
    log("LM/SFT step ...")
    b["lm_step"] = e = bench_lm_step(setup, batch, seq)
    res["compile_s"]["LM/SFT step"] = e["compile_s"]
    res["memory"]["LM/SFT step"] = e["memory"]
    res["checks"]["LM step state donated (aliased / state bytes)"] = _donation_text(
        e["donation"])
  if "rm_step" in only:
    log("RM step ...")
    b["rm_step"] = e = bench_rm_step(setup, batch, seq)
    res["compile_s"]["RM step"] = e["compile_s"]
    res["memory"]["RM step"] = e["memory"]
  for key, rows in (("rollout", shape.batch), ("decode_b1", decode_batch)):
    if key in only:
      log(f"{key} ...")
      name = "rollout" if key == "rollout" else f"decode batch {rows}"
      b[key] = e = bench_rollout(setup, rows, shape.prompt_len, shape.new_tokens, name)
      for part in ("prefill", "decode"):
        res["compile_s"][f"{name}: {part}"] = e["compile_s"][part]
      res["memory"][f"{name}: decode"] = e["memory"]
      res["checks"][f"{name}: host transfers inside compiled prefill/decode"] = (
          e["checks"]["host_transfers"] or "none")
      res["checks"][f"{name}: decode loop is an on-device while loop"] = e["checks"]["while_loop"]
      cc = e["checks"]["cache_copies"]
      res["checks"][f"{name}: copies of the KV cache (or a layer of it) in the decode loop"] = (
          f"{cc['count']} ({cc['total_bytes']:,} bytes)")
      cb = e["checks"]["cache_buffers"]
      res["checks"][f"{name}: new cache-shaped buffers per decode step (whole cache / one "
                    "layer)"] = f"{cb['whole']} / {cb['layer']} ({cb['bytes']:,} bytes)"
  if "ppo" in only:
    log("PPO iteration ...")
    b["ppo_iteration"] = e = bench_ppo(setup, shape, phases=ppo_phases)
    res["compile_s"][e["name"]] = e["compile_s"]
    for phase, v in e.get("phases", {}).items():
      res["compile_s"][f"PPO phase: {phase}"] = v["compile_s"]
    res["memory"][e["name"]] = e["memory"]
    ck = e["checks"]
    res["checks"]["PPO iteration state donated (aliased / state bytes)"] = _donation_text(
        ck["donation"])
    cp = ck["copies"]
    res["checks"]["PPO iteration copies (count, bytes, largest)"] = (
        f"{cp['count']} copies, {cp['total_bytes']:,} bytes; largest "
        + ", ".join(f"{x['op']} ({x['bytes']:,} B)" for x in cp["largest"]))
    st = cp["state_shaped"]
    res["checks"]["PPO iteration copies shaped like a state leaf (or its layer slice)"] = (
        f"{st['count']} copies, {st['total_bytes']:,} bytes"
        + ("; largest " + ", ".join(f"{x['op']} ({x['bytes']:,} B)" for x in st["largest"])
           if st["largest"] else ""))
    res["checks"]["PPO iteration host transfers"] = ck["host_transfers"] or "none"
    if "compilations_after_new_prompts" in ck:
      res["checks"]["PPO iteration compilations after 2 batches of new prompt lengths"] = (
          ck["compilations_after_new_prompts"])
  if "logprobs" in only:
    log("log-probs ...")
    b["logprobs"] = e = bench_logprobs(setup, shape.minibatch, shape.prompt_len,
                                       shape.new_tokens, logprob_chunk, logprob_vocab)
    for key in ("full_logits", "from_hidden"):
      res["compile_s"][f"{e['name']}: {key} fwd+bwd"] = e[f"{key}/forward_backward"]["compile_s"]
  if setup.peak.matmul_n:
    _remeasure_peak(res, setup)
  try:
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    pass
  return res


def _remeasure_peak(res: dict, setup: Setup) -> None:
  """A measured (CPU) peak is taken again at the end; the higher one counts and every MFU is
  rescaled to it: on a shared machine the best matmul seen is the closest to the real peak."""
  from instructjax.benchmarking.hardware import device_peak  # pylint: disable=import-outside-toplevel
  first = setup.peak.flops
  again = device_peak(setup.cfg.dtype, setup.peak.matmul_n).flops
  best = max(first, again)
  res["peak"]["measurements"] = [first, again]
  res["peak"]["flops"] = best
  res["peak"]["source"] += " (best of the start and the end of the run)"

  def rescale(x):
    if isinstance(x, dict):
      for k, v in x.items():
        if k == "mfu" and isinstance(v, float):
          x[k] = v * first / best
        else:
          rescale(v)
  rescale(res["benchmarks"])


def _donation_text(d: dict) -> str:
  if d["aliased_bytes"] is None:
    return f"n/a (no memory analysis), state {d['donated_bytes']:,} bytes"
  return (f"{d['aliased_bytes']:,} / {d['donated_bytes']:,} bytes "
          f"({100 * d['aliased_fraction']:.0f}%)")


__all__ = ["BENCHMARKS", "PPOShape", "run_all", "Setup", "bench_lm_step", "bench_ppo", "bench_rm_step", "bench_rollout",
           "fixed_length_sampling", "lm_batch", "prompt_batch", "rm_batch", "score_rollout"]
