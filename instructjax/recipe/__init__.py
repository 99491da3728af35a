"""The whole recipe as one run (pretrain -> SFT -> RM -> PPO / PPO-ptx -> group-conditioned RM
and PPO-ptx -> evaluation), its evaluation, and sweeps over stage configs."""
