"""PPO-ptx: the rollout + update iteration, its state, prompts and pretraining data, held-out
evaluation, and the stage runner."""
from instructjax.stages.ppo.state import PPOState, create_ppo_state, ppo_state_shardings
from instructjax.stages.ppo.step import (Advantages, PPOConfig, PPOModels, Rollout,
                                         eval_episodes, make_ppo_iteration, policy_objective,
                                         ppo_update, response_logprobs, rewards_and_advantages,
                                         rollout, score_sequences, value_objective)

__all__ = ["Advantages", "PPOConfig", "PPOModels", "PPOState", "Rollout", "create_ppo_state",
           "eval_episodes", "make_ppo_iteration", "policy_objective", "ppo_update",
           "ppo_state_shardings", "response_logprobs", "rewards_and_advantages", "rollout",
           "score_sequences", "value_objective"]
