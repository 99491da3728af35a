"""PPO's held-out evaluation: episodes on fixed prompts (RM score, KL to the SFT policy,
length, EOS, gold correctness where prompts have gold answers, the closed-domain hallucination
rate on InstructWorld prompts and there the courtesy prefix its polite labelers like) and the
held-out pretraining loss, the alignment-tax numbers.

Gold correctness and hallucination are reported only: keep-best may not use them
(stages/runner.py), and nothing in training reads them.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np

from instructjax.generation import SamplingConfig
from instructjax.parallel.sharding import ShardingContext
from instructjax.stages import runner
from instructjax.stages.lm import make_lm_eval_step
from instructjax.stages.ppo.data import gold_of, is_world_prompt
from instructjax.stages.ppo.step import PPOModels, eval_episodes
from instructjax.training import interrupts
from instructjax.training.metrics_writer import MetricsWriter, read_metrics
from instructjax.world.correctness import correctness, exact_match, has_courtesy_prefix
from instructjax.world.hallucination import hallucinates

EVAL_METRICS = ("score", "kl", "response_length", "eos_fraction", "courtesy_prefix_fraction",
                "correctness", "exact_match", "hallucination_rate", "pretrain_heldout_loss")


def eval_params(state):
  """The weights evaluated and saved: the EMA when there is one, else the policy."""
  return state.policy_params if state.ema_params is None else state.ema_params


class Evaluator:
  """Held-out evaluation of a policy: episodes on fixed prompts + held-out pretraining loss.

  Every call samples with the same keys, so two policies (or two steps) are compared on the
  same prompts with the same sampling noise.
  """

  def __init__(self, models: PPOModels, sampling: SamplingConfig, tokenizer,
               prompt_batches: Sequence[dict], records: Sequence[Any], num_prompts: int,
               lm_batches: Sequence[dict], ctx: Optional[ShardingContext], seed: int,
               courtesy: bool = True):
    self.episodes = _jit_episodes(models, sampling, ctx)
    self.courtesy = courtesy  # InstructWorld's "sure! " prefix: meaningless in other data.
    self.num_prompts = num_prompts
    self.lm_eval = jax.jit(make_lm_eval_step(models.policy))
    self.tokenizer, self.prompt_batches, self.lm_batches = tokenizer, prompt_batches, lm_batches
    self.golds = [gold_of(r) for r in records]
    # Closed-domain hallucination is defined for InstructWorld prompts only.
    self.world_prompts = [r.prompt if is_world_prompt(r.prompt) else None for r in records]
    self.key = jax.random.fold_in(jax.random.key(seed), 3)

  def __bool__(self) -> bool:
    """Whether there is anything held out to evaluate on."""
    return bool(self.prompt_batches or self.lm_batches)

  def __call__(self, policy_params, ref_params, rm_params) -> dict[str, float]:
    interrupts.check()  # A signal whose exception got lost stops the run here.
    out: dict[str, float] = {}
    if self.prompt_batches:
      out.update(self._episodes(policy_params, ref_params, rm_params))
    if self.lm_batches:
      parts = [jax.device_get(self.lm_eval(policy_params, b)) for b in self.lm_batches]
      out["pretrain_heldout_loss"] = runner.weighted_mean((m["loss"], m["tokens"]) for m in parts)
    return out

  def _episodes(self, policy_params, ref_params, rm_params) -> dict[str, float]:
    cols = {k: [] for k in ("score", "kl", "length", "finished", "correct", "exact", "prefix",
                            "hallucination")}
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
        if self.courtesy:
          cols["prefix"].append(has_courtesy_prefix(text))
        gold = self.golds[ex]
        if gold is not None:
          cols["correct"].append(correctness(text, finished, gold))
          cols["exact"].append(exact_match(text, finished, gold))
        if self.world_prompts[ex] is not None:
          cols["hallucination"].append(hallucinates(self.world_prompts[ex], text))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")
    out = {"score": mean(cols["score"]), "kl": mean(cols["kl"]),
           "response_length": mean(cols["length"]), "eos_fraction": mean(cols["finished"]),
           "num_prompts": len(cols["score"])}
    if self.courtesy:
      out["courtesy_prefix_fraction"] = mean(cols["prefix"])
    if cols["correct"]:
      out.update(correctness=mean(cols["correct"]), exact_match=mean(cols["exact"]))
    if cols["hallucination"]:
      out["hallucination_rate"] = mean(cols["hallucination"])
    return out



def _jit_episodes(models: PPOModels, sampling: SamplingConfig,
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



def log_start_eval(workdir: str, sft_eval: dict[str, float]) -> None:
  """Logs the SFT policy's evaluation as the eval record of step 0 (once per workdir), so the
  held-out curves start where PPO starts."""
  if any(r.get("step") == 0 for r in read_metrics(workdir, split="eval")):
    return
  with MetricsWriter(workdir) as writer:
    writer.write(0, sft_eval, "eval")
