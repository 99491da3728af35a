"""The KL coefficient of PPO-ptx: two fixed betas (InstructGPT's beta of the per-token KL
penalty against the SFT policy), the adaptive controller off so each run keeps its beta.

  python experiments/sweep.py --sweep=configs/sweeps/kl_coef.py --config=configs/ppo.py:tiny \
      --set=init_from=runs/x/sft/model --set=reward_model=runs/x/rm/model --workdir=runs/kl
"""
from instructjax.recipe.sweeps import axis, with_fixed


def get_sweep():
  return with_fixed(axis("ppo.kl.init_beta", [0.01, 0.2]), ppo__kl__adaptive=False)
