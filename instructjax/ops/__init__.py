"""Pure, jit-able math of the InstructGPT recipe: losses, KL, GAE, sampling filters.

Shapes: B batch, T tokens, V vocab, K responses per prompt. Masks are bool, applied
with jnp.where (garbage in padding never leaks), reductions run over valid entries.
"""
from instructjax.ops.advantages import gae, leave_one_out_advantages
from instructjax.ops.kl import (KL_ESTIMATORS, MAX_LOG_RATIO, KLController,
                                adaptive_kl_controller, fixed_kl_controller, kl_estimate,
                                update_kl_controller)
from instructjax.ops.lm_loss import cross_entropy_loss
from instructjax.ops.logprobs import (entropy_from_logits, masked_count, masked_max,
                                      masked_mean, masked_sum, masked_var, masked_whiten,
                                      token_logprobs)
from instructjax.ops.ppo_loss import entropy_bonus, explained_variance, policy_loss, value_loss
from instructjax.ops.reward_loss import (normalize_rewards, pairwise_ranking_loss,
                                         ranked_pairwise_loss, reward_normalization)
from instructjax.ops.rewards import (TokenRewards, apply_no_eos_penalty, compute_rewards,
                                     last_valid_index, whiten_rewards)
from instructjax.ops.sampling import (apply_temperature, filter_logits, sample_token,
                                      top_k_filter, top_p_filter)
