"""Optimizers from config: optax AdamW with warmup + decay, clipping and accumulation."""
from __future__ import annotations

import jax
import optax

from instructjax.config import ConfigError

DECAYS = ("cosine", "linear", "constant")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to cfg.lr over cfg.warmup_steps, then cosine/linear/constant decay
  to cfg.lr * cfg.final_lr_fraction at `total_steps`."""
  if cfg.decay not in DECAYS:
    raise ConfigError(f"config.optim.decay: {cfg.decay!r} is not one of {DECAYS}")
  warmup = int(cfg.warmup_steps)
  decay_steps = max(int(total_steps) - warmup, 1)
  end = cfg.lr * cfg.final_lr_fraction
  if cfg.decay == "cosine":
    after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.final_lr_fraction)
  elif cfg.decay == "linear":
    after = optax.linear_schedule(cfg.lr, end, decay_steps)
  else:
    after = optax.constant_schedule(cfg.lr)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def _decay_mask(params):
  # Weight decay on weight matrices only, not on norms, biases or the scalar head's bias.
  # Names rather than ndim decide, because scanned layers stack vectors into matrices.
  def decays(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return name.endswith("kernel") or name in ("embed", "pos_embed", "lm_head")
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """cfg: config.optim (lr, warmup_steps, decay, final_lr_fraction, weight_decay, b1, b2, eps,
  grad_clip, grad_accum_steps). Returns (tx, schedule)."""
  if cfg.lr <= 0:
    raise ConfigError(f"config.optim.lr: must be positive, got {cfg.lr}")
  if cfg.grad_accum_steps < 1:
    raise ConfigError(f"config.optim.grad_accum_steps: must be >= 1, got {cfg.grad_accum_steps}")
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=_decay_mask))
  tx = optax.chain(*parts)
  if cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
  return tx, schedule
