"""PPO-ptx (InstructGPT): one pure function per phase, and one jitted iteration made of them.

    iteration = make_ppo_iteration(cfg, policy_model, value_model, rm_model, policy_tx,
                                   value_tx, sampling)
    state, metrics = iteration(state, batch, rng)   # pure; jit it with the state donated

An iteration is
  1. rollout: the policy samples responses to a batch of left-padded prompts (KV-cache sampler,
     stops at EOS); full forwards over prompt + response then give the policy's and the frozen
     reference's log-probs of every response token AT THE SAMPLING TEMPERATURE (the tokens were
     drawn from softmax(logits / T), so that is the distribution the ratio and the KL are about),
     the value model's values and the reward model's score at the last real token;
  2. rewards: -beta * KL per token plus the (optionally no-EOS-penalised) score on the last
     response token; advantages by GAE over response tokens, whitened over the valid ones, or
     (advantage_estimator "rloo") each response's summed reward minus the mean of the other
     responses to its prompt, for every token of it, scaled to unit variance: no value model
     is read or trained;
  3. update: epochs x minibatches as nested lax.scans; per minibatch one clipped-surrogate step
     of the policy (+ entropy bonus, + ptx_coef * LM loss on a pretraining minibatch,
     + kl_loss_coef * the exact KL to the reference's next-token distributions at the
     minibatch's positions; one gradient) and one clipped value-loss step of the value model
     with its own optimizer;
  4. the KL controller sees the rollout's KL; the optional policy EMA follows the new weights.

Top-k / top-p only shape what the sampler draws; the policy PPO optimises (and the KL is
measured on) is the unfiltered softmax(logits / T), which is also what the sampler reports.

Alignment: for a batch of width P (prompt) + N (response), response token t sits at column
P + t and is predicted by the logits (and valued by the value head) at column P + t - 1.

No dropout anywhere: every forward runs with deterministic=True whatever the model config
says. Dropout would make the rollout's log-probs disagree with the update's at the same
weights (the ratio would not start at 1), and the frozen models must score deterministically.

Masks are booleans applied with `where` (see instructjax.ops), so whatever padding positions
of a rollout hold, nan included, never reaches a loss or a gradient.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from instructjax.generation import SamplingConfig, make_sampler
from instructjax.models import (DecoderLM, gather_at, last_token_index, lm_head_weight,
                                positions_from_mask)
from instructjax.models.response_loglik import scoring_segments
from instructjax.ops import (KL_ESTIMATORS, apply_no_eos_penalty, compute_rewards,
                             explained_variance, gae, leave_one_out_advantages, masked_count,
                             masked_mean, policy_loss, update_kl_controller, value_loss,
                             whiten_rewards)
from instructjax.ops.head_chunks import positions_per_chunk
from instructjax.ops.kl import exact_kl_from_hidden
from instructjax.ops.logprobs import logprobs_from_hidden, masked_var
from instructjax.parallel import xla_options
from instructjax.parallel.sharding import ShardingContext
from instructjax.stages.lm import LM_KEYS, lm_loss
from instructjax.stages.ppo.state import PPOState
from instructjax.training.microbatch import accumulate_gradients, merge_rows, split_rows

Array = jax.Array
PROMPT_KEYS = ("tokens", "segment_ids", "positions")  # The prompt batch contract, [B, P].
ADVANTAGE_ESTIMATORS = ("gae", "rloo")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """Static PPO hyperparameters (hashable: they shape the compiled iteration).

  Attributes:
    rollout_batch_size: prompts (episodes) per iteration, B.
    minibatch_size: episodes per gradient step, M; B must be a multiple of it.
    micro_batch_size: episodes per forward/backward pass; M must be a multiple of it. Each
      minibatch's gradient is accumulated over M / micro_batch_size passes (one optimizer
      step), and the rollout's forwards run in chunks of this size. 0: M (no accumulation).
    epochs: passes over the rollout per iteration.
    clip_eps: policy ratio clip range.
    value_clip_eps: value clip range around the rollout values; 0 disables value clipping.
    vf_coef: scale of the value loss (the value model has its own optimizer, so this only
      matters against gradient clipping and for the reported total).
    entropy_coef: entropy bonus coefficient (0: the entropy is only reported).
    gamma, lam: GAE discount and lambda over response tokens (unused by "rloo").
    advantage_estimator: "gae" (a value model's baseline per token) or "rloo" (the other
      responses to the same prompt are the baseline; needs responses_per_prompt >= 2).
    responses_per_prompt: k, the rollout's rows come in consecutive groups of k responses
      to one prompt (the data layer repeats each prompt k times).
    whiten_rewards: scale-normalise per-token rewards over the batch before GAE.
    kl_estimator: "k1" (log-ratio, Ziegler/InstructGPT), "k2" or "k3" (see ops.kl).
    ptx_coef: coefficient of the pretraining LM loss (InstructGPT's gamma); 0: plain PPO.
    kl_loss_coef: coefficient of the exact per-token KL(policy || reference) over the
      vocabulary at the rollout's positions, added to the policy loss (on top of the KL
      penalty in the reward); 0: off.
    no_eos_penalty: subtracted from the score of responses without EOS; 0: off.
    ema_decay: decay of the policy EMA kept in the state; 0: no EMA.
  """
  rollout_batch_size: int = 64
  minibatch_size: int = 16
  micro_batch_size: int = 0
  epochs: int = 4
  clip_eps: float = 0.2
  value_clip_eps: float = 0.2
  vf_coef: float = 1.0
  entropy_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  whiten_rewards: bool = False
  kl_estimator: str = "k1"
  ptx_coef: float = 0.0
  kl_loss_coef: float = 0.0
  no_eos_penalty: float = 0.0
  ema_decay: float = 0.0
  advantage_estimator: str = "gae"
  responses_per_prompt: int = 1

  @property
  def num_minibatches(self) -> int:
    return self.rollout_batch_size // self.minibatch_size

  @property
  def micro_batch(self) -> int:
    """Episodes per forward/backward pass (micro_batch_size, or the minibatch when 0)."""
    return self.micro_batch_size or self.minibatch_size

  @property
  def num_micro_batches(self) -> int:
    return self.minibatch_size // self.micro_batch

  @property
  def use_ptx(self) -> bool:
    return self.ptx_coef > 0

  @property
  def trains_value(self) -> bool:
    """Whether the value model gives the advantages' baseline (and so is read and trained)."""
    return self.advantage_estimator == "gae"

  def validate(self, prefix: str = "ppo") -> "PPOConfig":
    """Raises ValueError naming `config.<prefix>.<key>`; returns self."""
    def fail(key, msg):
      raise ValueError(f"config.{prefix}.{key}: {msg}")
    for key in ("rollout_batch_size", "minibatch_size", "epochs"):
      if getattr(self, key) < 1:
        fail(key, f"must be >= 1, got {getattr(self, key)}")
    if self.rollout_batch_size % self.minibatch_size:
      fail("minibatch_size", f"{self.minibatch_size} does not divide rollout_batch_size="
           f"{self.rollout_batch_size}")
    if self.micro_batch_size < 0 or self.minibatch_size % self.micro_batch:
      fail("micro_batch_size", f"must be 0 or a divisor of minibatch_size="
           f"{self.minibatch_size}, got {self.micro_batch_size}")
    if self.clip_eps <= 0:
      fail("clip_eps", f"must be > 0, got {self.clip_eps}")
    for key in ("value_clip_eps", "vf_coef", "entropy_coef", "ptx_coef", "kl_loss_coef",
                "no_eos_penalty"):
      if getattr(self, key) < 0:
        fail(key, f"must be >= 0, got {getattr(self, key)}")
    if not 0 < self.gamma <= 1:
      fail("gamma", f"must be in (0, 1], got {self.gamma}")
    if not 0 <= self.lam <= 1:
      fail("lam", f"must be in [0, 1], got {self.lam}")
    if self.kl_estimator not in KL_ESTIMATORS:
      fail("kl_estimator", f"{self.kl_estimator!r} is not one of {KL_ESTIMATORS}")
    if not 0 <= self.ema_decay < 1:
      fail("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
    k = self.responses_per_prompt
    if k < 1 or self.rollout_batch_size % k:
      raise ValueError(f"config.{prefix}.responses_per_prompt={k} must be a positive divisor "
                       f"of config.{prefix}.rollout_batch_size={self.rollout_batch_size}")
    if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
      fail("advantage_estimator", f"{self.advantage_estimator!r} is not one of "
           f"{ADVANTAGE_ESTIMATORS}")
    if self.advantage_estimator == "rloo" and k < 2:
      fail("advantage_estimator", f"'rloo' compares the responses to one prompt: it needs "
           f"config.{prefix}.responses_per_prompt >= 2, got {k}")
    return self


@dataclasses.dataclass(frozen=True)
class PPOModels:
  """The three networks (modules, not weights): policy ("lm"), value and reward ("scalar")."""
  policy: DecoderLM
  value: DecoderLM
  rm: DecoderLM


@flax.struct.dataclass
class Rollout:
  """One batch of episodes. B rows, P prompt columns, N response columns.

  Attributes:
    tokens, positions, segment_ids: int32 [B, P+N], prompt (left padded) + response (PAD
      after EOS); segment_ids 0 on padding. The model input of every forward below.
    response_tokens: int32 [B, N].
    response_mask: bool [B, N], True up to and including EOS.
    logprobs: float32 [B, N], policy log-probs recomputed by a full forward (the "old" ones).
    ref_logprobs: float32 [B, N], the reference (SFT) policy's.
    sampler_logprobs: float32 [B, N], what the KV-cache sampler reported (a cross-check).
    values: float32 [B, N], V at the column that predicts each response token (0 when the
      advantages do not read a value model).
    rm_score: float32 [B], the reward model at the EOS of prompt + response (+ the EOS the
      RM's training data gives every response, when the policy did not stop: `rm_inputs`).
    score: float32 [B], rm_score after the no-EOS penalty (what the reward uses).
    finished: bool [B], the response ended with EOS.
    lengths: int32 [B], response tokens incl. EOS.
    has_prompt: bool [B], False for batch-padding rows (nothing sampled, nothing counts).
    prompt_len: static P.
  """
  tokens: Array
  positions: Array
  segment_ids: Array
  response_tokens: Array
  response_mask: Array
  logprobs: Array
  ref_logprobs: Array
  sampler_logprobs: Array
  values: Array
  rm_score: Array
  score: Array
  finished: Array
  lengths: Array
  has_prompt: Array
  prompt_len: int = flax.struct.field(pytree_node=False, default=0)


class Advantages(NamedTuple):
  advantages: Array  # [B, N] float32, whitened over valid tokens; 0 on padding.
  returns: Array  # [B, N] float32 value targets; 0 on padding.
  rewards: Array  # [B, N] float32 per-token rewards (after optional whitening).
  kl: Array  # [B] summed per-token KL estimate of each episode.
  non_score_reward: Array  # [B] sum of -beta * kl_t.


# ------------------------------------------------------------------------------- forwards


def response_hidden(model: DecoderLM, params, tokens: Array, positions: Array,
                    segment_ids: Array, prompt_len: int) -> Array:
  """Final hidden states predicting each response token: [B, P+N] inputs -> [B, N, d] float32.

  Column P + t - 1 predicts response token t (t = 0 .. N-1).
  """
  hidden, _ = model.apply({"params": params}, tokens, positions, segment_ids,
                          deterministic=True, return_hidden=True)  # [B, P+N, d]
  n = tokens.shape[1] - prompt_len
  return jax.lax.slice_in_dim(hidden, prompt_len - 1, prompt_len - 1 + n, axis=1)


def head_chunk(model: DecoderLM, hidden: Array) -> int:
  """Positions per chunk of the LM head over hidden [B, N, d] (`model.cfg.logits_chunk_tokens`)."""
  b, n = hidden.shape[:2]
  return positions_per_chunk(b, n, model.cfg.resolved_logits_chunk_tokens)


def response_logprobs(model: DecoderLM, params, tokens: Array, positions: Array,
                      segment_ids: Array, prompt_len: int, temperature: float,
                      with_entropy: bool = False):
  """Log-probs [B, N] of the response tokens under softmax(logits / temperature) (and the
  entropies [B, N] with `with_entropy`), from the hidden states `model.cfg.logits_chunk_tokens`
  tokens at a time: no [B, N, vocab] array."""
  hidden = response_hidden(model, params, tokens, positions, segment_ids, prompt_len)
  return logprobs_from_hidden(hidden, lm_head_weight(model.cfg, params), tokens[:, prompt_len:],
                              temperature, chunk=head_chunk(model, hidden),
                              with_entropy=with_entropy)


def response_values(model: DecoderLM, params, tokens: Array, positions: Array,
                    segment_ids: Array, prompt_len: int) -> Array:
  """Values [B, N]: the scalar head at the column that predicts each response token."""
  values, _ = model.apply({"params": params}, tokens, positions, segment_ids,
                          deterministic=True)  # [B, P+N]
  n = tokens.shape[1] - prompt_len
  return jax.lax.slice_in_dim(values, prompt_len - 1, prompt_len - 1 + n, axis=1)


def sequence_scores(model: DecoderLM, params, tokens: Array, positions: Array,
                    segment_ids: Array, prompt_len: int) -> Array:
  """Reward-model scores [B]: the scalar head at the last real token of each row.

  Rows are [B, P+N] (or P+N+1, `rm_inputs`): the prompt in the first P = prompt_len columns
  (left padded), the response after. They reach the RM as its training rows did: the prompt
  segment 1, the response segment 2 (`scoring_segments`), so a reward model that scores the
  response's log-likelihood (model.score_logprob) knows where the response starts.
  """
  cols = jnp.arange(tokens.shape[1])[None, :]  # [1, T]
  split = jnp.where(segment_ids != 0, jnp.where(cols < prompt_len, 1, 2), 0)  # [B, T]
  rm_segments, shared_prefix = scoring_segments(model.cfg.score_logprob,
                                                split.astype(segment_ids.dtype))
  values, _ = model.apply({"params": params}, tokens, positions, rm_segments,
                          deterministic=True, shared_prefix=shared_prefix)  # [B, T]
  return gather_at(values, last_token_index(segment_ids))


def map_chunks(fn: Callable[[Any], Any], tree: Any, chunk: int) -> Any:
  """fn over the batch in chunks of `chunk` rows (lax.map), outputs re-assembled in order.

  Chunks are `microbatch.split_rows` parts: chunk j holds rows j, j + n, j + 2n, ...
  (n = B / chunk), so each device's rows stay on that device when the batch is sharded.
  """
  b = jax.tree.leaves(tree)[0].shape[0]
  if chunk >= b:
    return fn(tree)
  return merge_rows(jax.lax.map(fn, split_rows(tree, b // chunk)))


# -------------------------------------------------------------------------------- rollout


def rm_inputs(tokens: Array, segment_ids: Array, finished: Array,
              eos_id: int) -> tuple[Array, Array, Array]:
  """Rows [B, P+N] as the reward model was trained on them, [B, P+N+1]: a response that did
  not finish gets the EOS that the data layer appends to every comparison response (so the
  RM is never asked to score a row shape it has not seen); other rows get a padding column.

  Returns (tokens, positions, segment_ids); the score is read at the last real token.
  """
  b = tokens.shape[0]
  last = last_token_index(segment_ids)  # [B]: an unfinished response fills the row.
  put = jnp.logical_not(finished) & jnp.any(segment_ids != 0, axis=-1)
  rows = jnp.arange(b)
  tokens = jnp.pad(tokens, ((0, 0), (0, 1))).at[rows, last + 1].set(
      jnp.where(put, eos_id, 0))
  segment_ids = jnp.pad(segment_ids, ((0, 0), (0, 1))).at[rows, last + 1].set(
      jnp.where(put, segment_ids[rows, last], 0))
  return tokens, positions_from_mask(segment_ids), segment_ids


def score_sequences(models: PPOModels, cfg: PPOConfig, temperature: float, state: PPOState,
                    tokens: Array, positions: Array, segment_ids: Array, prompt_len: int,
                    finished: Array, eos_id: int) -> dict[str, Array]:
  """The rollout's recompute: policy and reference log-probs, values [B, N] and RM scores [B]
  of prompt + response rows [B, P+N], in chunks of `cfg.micro_batch` rows (`map_chunks`).
  The RM scores each row with an EOS after an unfinished response (`rm_inputs`)."""
  p = prompt_len

  def score_chunk(seq):
    tok, pos, seg, rm_seq = seq
    return {
        "logprobs": response_logprobs(models.policy, state.policy_params, tok, pos, seg, p,
                                      temperature),
        "ref_logprobs": response_logprobs(models.policy, state.ref_params, tok, pos, seg, p,
                                          temperature),
        "values": (response_values(models.value, state.value_params, tok, pos, seg, p)
                   if cfg.trains_value else jnp.zeros(tok[:, p:].shape, jnp.float32)),
        "rm_score": sequence_scores(models.rm, state.rm_params, *rm_seq, p),
    }

  rm_seq = rm_inputs(tokens, segment_ids, finished, eos_id)
  return map_chunks(score_chunk, (tokens, positions, segment_ids, rm_seq), cfg.micro_batch)


def rollout(models: PPOModels, sampling: SamplingConfig, cfg: PPOConfig, state: PPOState,
            prompts: dict, rng: Array, shard: Optional[ShardingContext] = None) -> Rollout:
  """Samples one response per prompt and scores it with every model. Pure, jit-able.

  Args:
    prompts: {"tokens", "segment_ids"} int32 [B, P], left padded.

  The forwards run in chunks of `cfg.micro_batch` rows, the shape of the update's forward
  passes, so the old log-probs are computed exactly as the first minibatch's new ones (ratio
  exactly 1).
  """
  params = state.policy_params
  temperature = sampling.logprob_temperature
  p = prompts["tokens"].shape[1]
  out = make_sampler(models.policy, sampling, shard)(params, prompts["tokens"],
                                                     prompts["segment_ids"], rng)
  segment_ids = out.segment_ids
  positions = positions_from_mask(segment_ids)

  scored = score_sequences(models, cfg, temperature, state, out.tokens, positions, segment_ids,
                           p, out.finished, sampling.eos_id)
  score = scored["rm_score"]
  if cfg.no_eos_penalty:
    score = apply_no_eos_penalty(score, out.finished, cfg.no_eos_penalty)
  return Rollout(
      tokens=out.tokens, positions=positions, segment_ids=segment_ids,
      response_tokens=out.response_tokens, response_mask=out.response_mask,
      logprobs=scored["logprobs"], ref_logprobs=scored["ref_logprobs"],
      sampler_logprobs=out.logprobs, values=scored["values"], rm_score=scored["rm_score"],
      score=score, finished=out.finished, lengths=out.lengths,
      has_prompt=jnp.any(prompts["segment_ids"] != 0, axis=-1), prompt_len=p)


def eval_episodes(models: PPOModels, sampling: SamplingConfig, policy_params, ref_params,
                  rm_params, prompts: dict, rng: Array,
                  shard: Optional[ShardingContext] = None) -> dict[str, Array]:
  """Samples held-out responses and scores them; pure, jit-able. No value model, no chunks.

  Returns per row: response_tokens [B, N], finished [B], lengths [B], score [B] (the raw RM
  score) and kl [B], the summed log-ratio policy - reference of the sampled tokens (at the
  sampling temperature; with greedy decoding, at temperature 1, where it is a log-ratio on
  the greedy response rather than a KL estimate).
  """
  p = prompts["tokens"].shape[1]
  temperature = sampling.logprob_temperature
  out = make_sampler(models.policy, sampling, shard)(policy_params, prompts["tokens"],
                                                     prompts["segment_ids"], rng)
  seq = (out.tokens, positions_from_mask(out.segment_ids), out.segment_ids)
  logp = response_logprobs(models.policy, policy_params, *seq, p, temperature)
  ref = response_logprobs(models.policy, ref_params, *seq, p, temperature)
  kl = jnp.sum(jnp.where(out.response_mask, logp - ref, 0.0), axis=-1)
  score = sequence_scores(models.rm, rm_params,
                          *rm_inputs(out.tokens, out.segment_ids, out.finished, sampling.eos_id),
                          p)
  return {"response_tokens": out.response_tokens, "finished": out.finished,
          "lengths": out.lengths, "score": score, "kl": kl}


# ------------------------------------------------------------------- rewards and advantages


def rewards_and_advantages(cfg: PPOConfig, ro: Rollout, beta: Array) -> Advantages:
  """Per-token rewards (-beta * KL, score on the last token), then whitened GAE advantages,
  or leave-one-out ones (`cfg.advantage_estimator`)."""
  mask = ro.response_mask
  tr = compute_rewards(ro.score, ro.logprobs, ro.ref_logprobs, mask, beta, cfg.kl_estimator)
  rewards = whiten_rewards(tr.rewards, mask) if cfg.whiten_rewards else tr.rewards
  if cfg.trains_value:
    advantages, returns = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam,
                              whiten_advantages=True)
  else:
    # The whole response is one action: its return is the summed reward, its baseline the
    # other responses to the prompt. Scaled, not re-centred: the group contrast is the signal.
    r = jnp.where(mask, rewards, 0.0)  # [B, N]
    returns = jnp.where(mask, jnp.flip(jnp.cumsum(jnp.flip(r, -1), -1), -1), 0.0)  # to go
    seq = leave_one_out_advantages(jnp.sum(r, -1), ro.has_prompt, cfg.responses_per_prompt)
    advantages = jnp.where(mask, seq[:, None], 0.0)  # [B, N]
    advantages = advantages * jax.lax.rsqrt(masked_var(advantages, mask) + 1e-8)
  return Advantages(advantages=advantages, returns=returns, rewards=rewards, kl=tr.kl,
                    non_score_reward=tr.non_score_reward)


# --------------------------------------------------------------------------------- update


def policy_objective(models: PPOModels, cfg: PPOConfig, temperature: float, params, mb: dict,
                     ptx_mb: Optional[dict], counts: Optional[dict] = None,
                     ref_params=None):
  """(loss, metrics) of one minibatch: clipped surrogate - entropy bonus + ptx_coef * LM loss
  + kl_loss_coef * exact KL to the reference (`ref_params`, read only with kl_loss_coef > 0).

  One objective, so one backward pass gives the InstructGPT PPO-ptx gradient (PPO's plus
  ptx_coef times the pretraining loss's). With ptx_coef == 0 the ptx batch is not read.

  Args:
    mb: minibatch of the rollout: tokens/positions/segment_ids [M, P+N], response_tokens,
      response_mask, old_logprobs, advantages [M, N], and the static prompt_len P.
    ptx_mb: LM batch [M_ptx, T] (tokens, positions, segment_ids, targets, loss_mask) or None.
    counts: for a micro-batch, its minibatch's {"tokens": valid response tokens,
      "ptx_tokens": counted ptx tokens}: the means divide by these, so the micro-batches'
      losses and metrics (ratio_max aside) add up to the minibatch's. None: mb's own.
  """
  counts = counts or {}
  if cfg.kl_loss_coef:
    # The reference's whole next-token distributions at the sampled positions; the policy's
    # log-probs, entropies and KL come from one pass of its head.
    seq = (mb["tokens"], mb["positions"], mb["segment_ids"], mb["prompt_len"])
    hidden = response_hidden(models.policy, params, *seq)  # [M, N, d]
    ref_params = jax.lax.stop_gradient(ref_params)
    logp, entropies, kl_tok = exact_kl_from_hidden(
        hidden, lm_head_weight(models.policy.cfg, params),
        response_hidden(models.policy, ref_params, *seq),
        lm_head_weight(models.policy.cfg, ref_params), temperature,
        chunk=head_chunk(models.policy, hidden),
        targets=mb["tokens"][:, mb["prompt_len"]:])  # [M, N] each
  else:
    logp, entropies = response_logprobs(models.policy, params, mb["tokens"], mb["positions"],
                                        mb["segment_ids"], mb["prompt_len"], temperature,
                                        with_entropy=True)  # [M, N] each
  mask = mb["response_mask"]
  pg_loss, pm = policy_loss(logp, mb["old_logprobs"], mb["advantages"], mask, cfg.clip_eps,
                            count=counts.get("tokens"))
  # The entropy bonus (ops.entropy_bonus) from per-token entropies.
  entropy = masked_mean(entropies, mask, count=counts.get("tokens"))
  loss = pg_loss
  if cfg.entropy_coef:
    loss = loss - cfg.entropy_coef * entropy
  metrics = {"policy_loss": pg_loss, "entropy": jax.lax.stop_gradient(entropy), **pm}
  if cfg.kl_loss_coef:
    kl = masked_mean(kl_tok, mask, count=counts.get("tokens"))
    loss = loss + cfg.kl_loss_coef * kl
    metrics["kl_exact"] = jax.lax.stop_gradient(kl)
  if cfg.use_ptx:  # Without ptx there is no ptx loss to log (not a loss of 0).
    ptx, ptx_tokens = lm_loss(models.policy, params, ptx_mb)
    if "ptx_tokens" in counts:  # The micro-batch's mean, re-weighted to the minibatch's.
      ptx = ptx * ptx_tokens / jnp.maximum(counts["ptx_tokens"], 1.0)
    loss = loss + cfg.ptx_coef * ptx
    metrics["ptx_loss"] = jax.lax.stop_gradient(ptx)
  return loss, metrics


def value_objective(models: PPOModels, cfg: PPOConfig, params, mb: dict,
                    counts: Optional[dict] = None):
  """(vf_coef * clipped value loss, metrics) of one minibatch, for the value model alone.

  counts: as in `policy_objective`.
  """
  values = response_values(models.value, params, mb["tokens"], mb["positions"],
                           mb["segment_ids"], mb["prompt_len"])  # [M, N]
  vl, vm = value_loss(values, mb["old_values"], mb["returns"], mb["response_mask"],
                      cfg.value_clip_eps or None, count=(counts or {}).get("tokens"))
  return cfg.vf_coef * vl, {"value_loss": vl, "value_clip_fraction": vm["clip_fraction"]}


# Metrics that are maxima: folded with max over micro-batches and minibatches (the others are
# summed over micro-batches, averaged over minibatches).
_MAX_METRICS = ("ratio_max",)


def ppo_update(models: PPOModels, cfg: PPOConfig, policy_tx: optax.GradientTransformation,
               value_tx: optax.GradientTransformation, temperature: float, state: PPOState,
               ro: Rollout, adv: Advantages, ptx: Optional[dict], rng: Array
               ) -> tuple[PPOState, dict]:
  """cfg.epochs x cfg.num_minibatches optimizer steps of policy and value model.

  Minibatch indices are a fresh permutation of the rollout per epoch; the ptx batch (if any,
  [B_ptx, T] with B_ptx a multiple of the number of minibatches) is likewise reshuffled per
  epoch and split evenly over the minibatches. With micro-batches (cfg.micro_batch_size), each
  minibatch's gradient is accumulated over its micro-batches (its ptx rows split alike): the
  same gradient up to float summation order, with a micro-batch's activations in memory.

  Returns:
    (state with new policy/value params and optimizer states, per-minibatch metrics: each an
    array [epochs, num_minibatches]).
  """
  b, m, nmb = cfg.rollout_batch_size, cfg.minibatch_size, cfg.num_minibatches
  data = {
      "tokens": ro.tokens, "positions": ro.positions, "segment_ids": ro.segment_ids,
      "response_tokens": ro.response_tokens, "response_mask": ro.response_mask,
      "old_logprobs": ro.logprobs, "old_values": ro.values, "advantages": adv.advantages,
      "returns": adv.returns}
  data = jax.lax.stop_gradient(data)
  n_micro = cfg.num_micro_batches

  def minibatch(carry, idx):
    pp, popt, vp, vopt = carry
    rows, ptx_rows = idx
    mb = {k: jnp.take(v, rows, axis=0) for k, v in data.items()}
    ptx_mb = None
    if cfg.use_ptx:
      ptx_mb = {k: jnp.take(v, ptx_rows, axis=0) for k, v in ptx.items()}
    counts = None
    if n_micro > 1:  # Micro-batches average over their minibatch's tokens.
      counts = {"tokens": masked_count(mb["response_mask"])}
      if cfg.use_ptx:
        counts["ptx_tokens"] = masked_count(ptx_mb["loss_mask"])
    with_len = lambda m: {**m, "prompt_len": ro.prompt_len}
    grad_policy = jax.value_and_grad(
        lambda p, b: policy_objective(models, cfg, temperature, p, with_len(b[0]), b[1],
                                      counts, state.ref_params), has_aux=True)
    grad_value = jax.value_and_grad(
        lambda p, b: value_objective(models, cfg, p, with_len(b), counts), has_aux=True)
    (loss, pmet), pgrads = accumulate_gradients(grad_policy, pp, (mb, ptx_mb), n_micro,
                                                _MAX_METRICS)
    updates, popt = policy_tx.update(pgrads, popt, pp)
    pp = optax.apply_updates(pp, updates)
    metrics = {**pmet, "loss": loss, "policy_grad_norm": optax.global_norm(pgrads)}
    if cfg.trains_value:
      (_, vmet), vgrads = accumulate_gradients(grad_value, vp, mb, n_micro)
      updates, vopt = value_tx.update(vgrads, vopt, vp)
      vp = optax.apply_updates(vp, updates)
      metrics.update(vmet, loss=loss + cfg.vf_coef * vmet["value_loss"],
                     value_grad_norm=optax.global_norm(vgrads))
    return (pp, popt, vp, vopt), metrics

  if ro.tokens.shape[0] != b:
    raise ValueError(f"the rollout has {ro.tokens.shape[0]} rows, PPOConfig.rollout_batch_size "
                     f"is {b}")
  if cfg.use_ptx and ptx["tokens"].shape[0] % (nmb * n_micro):
    raise ValueError(f"ptx batch of {ptx['tokens'].shape[0]} rows does not split over "
                     f"{nmb} minibatches of {n_micro} micro-batches")
  # Without ptx the ptx row indices are a dummy [nmb, 1] nobody reads (one scan signature).
  ptx_rows_total = ptx["tokens"].shape[0] if cfg.use_ptx else nmb

  def epoch(carry, key):
    k_rows, k_ptx = jax.random.split(key)
    rows = jax.random.permutation(k_rows, b).reshape(nmb, m)
    ptx_rows = jax.random.permutation(k_ptx, ptx_rows_total).reshape(nmb, -1)
    return jax.lax.scan(minibatch, carry, (rows, ptx_rows))

  carry = (state.policy_params, state.policy_opt_state, state.value_params,
           state.value_opt_state)
  (pp, popt, vp, vopt), metrics = jax.lax.scan(epoch, carry,
                                               jax.random.split(rng, cfg.epochs))
  state = state.replace(policy_params=pp, policy_opt_state=popt, value_params=vp,
                        value_opt_state=vopt)
  return state, metrics


# ------------------------------------------------------------------------------ iteration


def rollout_metrics(cfg: PPOConfig, ro: Rollout, adv: Advantages,
                    beta: Array) -> dict[str, Array]:
  """Episode statistics over the rows that hold a prompt (the value model's with "gae")."""
  rows = ro.has_prompt
  metrics = {
      "score": masked_mean(ro.rm_score, rows),
      "score_penalized": masked_mean(ro.score, rows),
      "kl": masked_mean(adv.kl, rows),
      "beta": beta,
      "non_score_reward": masked_mean(adv.non_score_reward, rows),
      "reward_total": masked_mean(adv.non_score_reward + ro.score, rows),
      "response_length": masked_mean(ro.lengths, rows),
      "eos_fraction": masked_mean(ro.finished, rows),
      "advantage_abs_mean": masked_mean(jnp.abs(adv.advantages), ro.response_mask),
  }
  if cfg.trains_value:
    ev = explained_variance(ro.values, adv.returns, ro.response_mask)
    # nan when the returns are constant (e.g. one token per response): report 0 instead,
    # so a logged nan always means a real problem.
    metrics["value_explained_variance"] = jnp.where(jnp.isnan(ev), 0.0, ev)
    metrics["value_mean"] = masked_mean(ro.values, ro.response_mask)
  return metrics


def make_ppo_iteration(cfg: PPOConfig, policy_model: DecoderLM, value_model: DecoderLM,
                       rm_model: DecoderLM, policy_tx: optax.GradientTransformation,
                       value_tx: optax.GradientTransformation, sampling: SamplingConfig, *,
                       shard: Optional[ShardingContext] = None,
                       policy_schedule: Optional[optax.Schedule] = None,
                       debug: bool = False) -> Callable:
  """Returns the pure `iteration(state, batch, rng) -> (state, metrics)`.

  Args:
    cfg: validated PPOConfig.
    policy_model: the policy's (and the reference's) module, head "lm".
    value_model, rm_model: head "scalar" modules (often the same architecture).
    policy_tx, value_tx: separate optimizers; each steps once per minibatch.
    sampling: rollout decoding (temperature, top-k, top-p, max_new_tokens, EOS/PAD ids).
    shard: sharding context for the sampler's activations.
    policy_schedule: reported as "lr" when given (its step is the policy optimizer's count).
    debug: also return every minibatch's metrics as "minibatch/<name>" [epochs, minibatches].

  batch: {"prompts": {"tokens", "segment_ids", ...} [B, P] left padded, "ptx": LM batch
  {"tokens", "positions", "segment_ids", "targets", "loss_mask"} [B_ptx, T] (needed only when
  cfg.ptx_coef > 0; otherwise ignored)}.

  Metrics (scalars): score, score_penalized, kl, beta (used for this batch's rewards),
  non_score_reward, reward_total, response_length, eos_fraction, value_explained_variance
  and value_mean (with "gae"), advantage_abs_mean, policy_loss, value_loss (with "gae"),
  ptx_loss (with ptx), loss, clip_fraction, value_clip_fraction (with "gae"), approx_kl,
  ratio_mean, ratio_max, entropy, policy_grad_norm, value_grad_norm (with "gae") (minibatch
  means, ratio_max a max), sampler_logprob_error.
  """
  cfg.validate()
  models = PPOModels(policy=policy_model, value=value_model, rm=rm_model)
  temperature = sampling.logprob_temperature

  def iteration(state: PPOState, batch: dict, rng: Array) -> tuple[PPOState, dict]:
    k_sample, k_update = jax.random.split(rng)
    ro = rollout(models, sampling, cfg, state, batch["prompts"], k_sample, shard)
    beta = state.kl.beta
    adv = rewards_and_advantages(cfg, ro, beta)
    new_state, mb_metrics = ppo_update(models, cfg, policy_tx, value_tx, temperature, state,
                                       ro, adv, batch.get("ptx"), k_update)
    # The controller sees the KL of the episodes just collected (Ziegler et al.), one
    # sample per episode.
    kl = update_kl_controller(state.kl, masked_mean(adv.kl, ro.has_prompt),
                              jnp.sum(ro.has_prompt))
    ema = state.ema_params
    if ema is not None:
      d = cfg.ema_decay
      ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, new_state.policy_params)
    new_state = new_state.replace(step=state.step + 1, kl=kl, ema_params=ema)

    metrics = rollout_metrics(cfg, ro, adv, beta)
    for k, v in mb_metrics.items():
      metrics[k] = jnp.max(v) if k in _MAX_METRICS else jnp.mean(v)
    metrics["sampler_logprob_error"] = jnp.max(jnp.where(
        ro.response_mask, jnp.abs(ro.sampler_logprobs - ro.logprobs), 0.0))
    if policy_schedule is not None:
      metrics["lr"] = policy_schedule(state.step * cfg.epochs * cfg.num_minibatches)
    if debug:
      metrics.update({f"minibatch/{k}": v for k, v in mb_metrics.items()})
    return new_state, metrics

  return iteration


def jit_iteration(iteration: Callable, ctx: Optional[ShardingContext], state_shardings: Any,
                  use_ptx: bool) -> Callable:
  """`iteration` (from `make_ppo_iteration`) jitted like `stages.jit.jit_step`: the state
  donated, shardings from the rules, the nested {"prompts", "ptx"} batch split along its
  leading axes, compiled with `xla_options`. Call the result at top level only."""
  if ctx is None:
    return xla_options.jit(iteration, donate_argnums=(0,))
  batch_sh = {"prompts": {k: ctx.batch_sharding(2) for k in PROMPT_KEYS}}
  if use_ptx:
    batch_sh["ptx"] = {k: ctx.batch_sharding(2) for k in LM_KEYS}
  return xla_options.jit(iteration, in_shardings=(state_shardings, batch_sh, ctx.replicated()),
                         out_shardings=(state_shardings, ctx.replicated()), donate_argnums=(0,))
