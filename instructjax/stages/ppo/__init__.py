"""PPO-ptx: the rollout + update iteration, its state, prompts and pretraining data, held-out
evaluation, and the stage runner."""
from instructjax.stages.ppo.state import PPOState, create_ppo_state, ppo_state_shardings
from instructjax.stages.ppo.step import (PROMPT_KEYS, Advantages, PPOConfig, PPOModels, Rollout,
                                         eval_episodes, jit_iteration, make_ppo_iteration,
                                         policy_objective, ppo_update, response_logprobs,
                                         rewards_and_advantages, rm_inputs, rollout,
                                         score_sequences, value_objective)

__all__ = ["PROMPT_KEYS", "Advantages", "PPOConfig", "PPOModels", "PPOState", "Rollout",
           "create_ppo_state", "eval_episodes", "jit_iteration", "make_ppo_iteration",
           "policy_objective", "ppo_state_shardings", "ppo_update", "response_logprobs",
           "rewards_and_advantages", "rm_inputs", "rollout", "score_sequences",
           "value_objective"]
