"""instructjax: the InstructGPT recipe (SFT -> reward model -> PPO-ptx) in JAX/Flax."""
from instructjax.api import LM, from_hf, load

__all__ = ["LM", "from_hf", "load"]
