"""SFT learning rate x seed: a product sweep (6 runs) for the tiny pipeline.

  python experiments/sweep.py --sweep=configs/sweeps/sft_lr.py --config=configs/sft.py:tiny \
      --set=init_from=runs/x/pretrain/model --workdir=runs/sft_lr
"""
from instructjax.recipe.sweeps import axis, product


def get_sweep():
  return product(axis("optim.lr", [3e-4, 1e-3, 3e-3]), axis("seed", [0, 1]))
