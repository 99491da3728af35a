"""Training stages: pretraining/SFT (LM), reward model and PPO-ptx steps and their drivers."""
