"""The reward model's evaluation and normalisation.

  evaluate_batches   held-out loss and pairwise accuracies of the labelers' ranked pairs;
  labeler_ceiling    how often the labelers' own (gold) utility orders those pairs as they did:
                     the ceiling of held-out accuracy. It reads the true utility, so it is
                     reported, never used for training or model selection;
  normalize          the affine map under which SFT samples score mean 0, folded into the head.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.models.heads import fold_affine
from instructjax.ops.reward_loss import reward_normalization
from instructjax.stages.rm.sampling import norm_sampling
from instructjax.world import comparisons as world_cmp
from instructjax.world.labelers import GROUP_SHARES, utility
from instructjax.world.prompts import gold_answer

# What the loop's periodic evaluation reports (keep-best may use these).
EVAL_METRICS = ("loss", "accuracy", "prompt_accuracy", "accuracy_strict", "accuracy_distinct",
                "identical_pair_fraction", "score_mean", "score_std")


def pairwise_agreement(scores: np.ndarray, k_mask: np.ndarray, tie_credit: float = 0.0,
                       ties: Optional[np.ndarray] = None,
                       pairs: Optional[np.ndarray] = None) -> dict[str, float]:
  """How often `scores` order the pairs of best-first slots as the slots are ordered.

  Args:
    scores: [N, K] a score per slot (higher = better); slot i is ranked above slot j if i < j.
    k_mask: [N, K] bool, valid slots.
    tie_credit: credit for a tied pair (0: counted wrong, as in the training metrics; 0.5: a
      coin flip, the fair value for a judge that cannot separate the two).
    ties: optional [N, K, K] bool, pairs that count as tied whatever the scores (identical
      responses: no judge can order them, the labeler's order is a coin flip).
    pairs: optional [N, K, K] bool, the only pairs to count.

  Returns:
    pair_accuracy (over all pairs), prompt_accuracy (per-prompt mean, then mean over prompts
    with a pair, the loss's weighting), num_pairs, num_prompts.
  """
  s = np.where(k_mask, np.asarray(scores, np.float64), 0.0)
  k = s.shape[1]
  upper = np.triu(np.ones((k, k), bool), 1)  # i < j: slot i is the better one.
  pair = k_mask[:, :, None] & k_mask[:, None, :] & upper  # [N, K, K]
  if pairs is not None:
    pair &= pairs
  diff = s[:, :, None] - s[:, None, :]
  tied = diff == 0 if ties is None else (diff == 0) | ties
  credit = np.where(tied, tie_credit, (diff > 0).astype(np.float64))
  per_prompt_pairs = pair.sum(axis=(1, 2))
  has = per_prompt_pairs > 0
  right = (credit * pair).sum(axis=(1, 2))
  total = int(per_prompt_pairs.sum())
  return {
      "pair_accuracy": float(right.sum() / max(total, 1)),
      "prompt_accuracy": float((right[has] / per_prompt_pairs[has]).mean()) if has.any() else 0.0,
      "num_pairs": total,
      "num_prompts": int(has.sum()),
  }


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



def score_texts(evaluate: Callable, params, batches: Sequence[dict]) -> np.ndarray:
  """Scores [N] of the sequences `text_batches` laid out, in input order."""
  out = []
  for batch in batches:
    m = jax.device_get(evaluate(params, batch))
    out.append(np.asarray(m["scores"])[np.asarray(m["k_mask"])])
  return np.concatenate(out)



def normalize(evaluate: Callable, params, batches: Sequence[dict], config) -> tuple[Any, dict]:
  """Folds into the head the map under which the SFT samples score mean 0 (std 1 for
  "gain_bias"); returns (params, what was done)."""
  raw = score_texts(evaluate, params, batches)
  gain, bias = 1.0, 0.0
  if config.rm.normalize != "none":
    g, b = reward_normalization(jnp.asarray(raw), mode=config.rm.normalize)
    gain, bias = float(g), float(b)
  params = fold_affine(params, gain, bias)
  after = score_texts(evaluate, params, batches)
  temperature, max_new = norm_sampling(config)
  return params, {
      "mode": config.rm.normalize, "gain": gain, "bias": bias,
      "reference": f"{int(raw.size)} SFT samples (temperature {temperature}, at most {max_new} "
                   f"new tokens) on {config.rm.norm_prompts} prompts",
      "sampling": {"temperature": temperature, "max_new_tokens": max_new},
      "num_samples": int(raw.size), "score_mean_before": float(raw.mean()),
      "score_std_before": float(raw.std()), "score_mean_after": float(after.mean()),
      "score_std_after": float(after.std())}

