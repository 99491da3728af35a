"""Gradient accumulation inside one jitted step: a minibatch's gradient as the sum of its
micro-batches' gradients, one `lax.scan` step per micro-batch, one optimizer step after.

Why: only one micro-batch's activations are alive at a time, which bounds the memory of the
backward pass on accelerators (a minibatch that does not fit as one pass still can as
several). It is not a speed-up: on the 2-core CPU the tiny PPO iteration (minibatch 8) takes
0.47 s with micro-batches of 4 against 0.42 s without (experiments/compare_tunix.py shape).

The objective must be normalised by the whole minibatch (token counts of the minibatch, not
of the micro-batch: the `count` argument of `ops.policy_loss` and friends), so that the
micro-batches' losses, metrics and gradients add up to the minibatch's.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def split_rows(tree: Any, n: int) -> Any:
  """Leaves [R, ...] -> [n, R / n, ...]; part j holds rows j, j + n, j + 2n, ...

  Row-strided: when R is sharded over devices in contiguous blocks, each part takes rows from
  every device's block and no row moves to another device.
  """
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"{x.shape[0]} rows do not split into {n} equal parts")
    return jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, tree)


def merge_rows(tree: Any) -> Any:
  """The inverse of `split_rows`: leaves [n, R / n, ...] -> [R, ...] in the original order."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:]), tree)


def accumulate_gradients(value_and_grad_fn: Callable, params: Any, batch: Any, n: int,
                         max_metrics: Sequence[str] = ()) -> tuple[tuple[Array, dict], Any]:
  """((loss, metrics), grads) of `batch` as the sum over its n micro-batches.

  Args:
    value_and_grad_fn: (params, micro_batch) -> ((loss, metrics), grads), with loss and
      metrics scalars normalised by the whole batch (see the module docstring).
    batch: pytree of [R, ...] arrays (None leaves allowed); micro-batches are `split_rows`.
    n: number of micro-batches; 1 calls value_and_grad_fn on the whole batch.
    max_metrics: metrics that are maxima (folded with max, not summed).

  Gradients are summed in float32 and returned in the parameters' dtypes.
  """
  if n == 1:
    return value_and_grad_fn(params, batch)
  micro = split_rows(batch, n)
  first = jax.tree.map(lambda x: x[0], micro)
  (_, metrics_shape), _ = jax.eval_shape(value_and_grad_fn, params, first)

  def fold(name, acc, value):
    return jnp.maximum(acc, value) if name in max_metrics else acc + value

  def body(carry, mb):
    loss_sum, metric_acc, grad_sum = carry
    (loss, metrics), grads = value_and_grad_fn(params, mb)
    grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
    metric_acc = {k: fold(k, metric_acc[k], v) for k, v in metrics.items()}
    return (loss_sum + loss, metric_acc, grad_sum), None

  init_metrics = {k: jnp.full(v.shape, -jnp.inf if k in max_metrics else 0.0, v.dtype)
                  for k, v in metrics_shape.items()}
  init = (jnp.zeros((), jnp.float32), init_metrics,
          jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  (loss, metrics, grads), _ = jax.lax.scan(body, init, micro)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
  return (loss, metrics), grads
