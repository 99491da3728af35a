"""Host batches -> global jax.Arrays laid out by the batch sharding, multi-host ready.

Each process feeds its own slice of the global batch (the data iterators shard per host);
`jax.make_array_from_process_local_data` assembles the global array without a gather.
Iterator state passes through untouched, so checkpoints still see the host iterator.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np

from instructjax.parallel.sharding import ShardingContext


def to_device_batch(batch: Mapping[str, np.ndarray], ctx: Optional[ShardingContext]) -> dict:
  if ctx is None:
    return {k: jax.numpy.asarray(v) for k, v in batch.items()}
  return {k: jax.make_array_from_process_local_data(ctx.batch_sharding(np.ndim(v)), np.asarray(v))
          for k, v in batch.items()}


class DeviceIterator:
  """Wraps a host batch iterator; keeps only array entries the step consumes (`keys`)."""

  def __init__(self, host_iter: Iterator[Mapping[str, Any]], ctx: Optional[ShardingContext],
               keys: Optional[tuple[str, ...]] = None):
    self.host_iter, self.ctx, self.keys = host_iter, ctx, keys

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self.host_iter)
    if self.keys is not None:
      batch = {k: batch[k] for k in self.keys}
    return to_device_batch(batch, self.ctx)

  def get_state(self):
    return self.host_iter.get_state()

  def set_state(self, state) -> None:
    self.host_iter.set_state(state)


def fixed_batches(host_iter: Iterable[Mapping[str, Any]], keys: Sequence[str],
                  ctx: Optional[ShardingContext], limit: int = 0) -> list[dict]:
  """The first `limit` batches of `host_iter` (all of them when 0) on device: the held-out
  batches an evaluation reads again at every call."""
  out = []
  for batch in host_iter:
    if limit and len(out) >= limit:
      break
    out.append(to_device_batch({k: batch[k] for k in keys if k in batch}, ctx))
  return out
