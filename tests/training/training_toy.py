"""Toy problem for the training-loop tests: linear regression with dropout, trained by adam.

The step uses its rng (dropout) and the batch order matters, so resuming with a wrong rng, a
wrong iterator position or a wrong optimizer state changes the parameters.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

DIM = 8
BATCH = 16
TX = optax.adam(1e-2)
W_TRUE = np.linspace(-1.0, 1.0, DIM).astype(np.float32)


def init_state() -> dict[str, Any]:
  params = {"w": jnp.zeros((DIM, 1), jnp.float32), "b": jnp.zeros((1,), jnp.float32)}
  return {"params": params, "opt_state": TX.init(params), "count": jnp.zeros((), jnp.int32)}


def shard_state(state, mesh) -> Any:
  """w sharded over the mesh's first axis, everything else replicated."""
  axis = mesh.axis_names[0]

  def place(x):
    # Only the (DIM, 1) weights and their adam moments are 2-D.
    spec = P(axis, None) if x.ndim == 2 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree.map(place, state)


def _loss(params, batch, rng):
  keep = jax.random.bernoulli(rng, 0.9, batch["x"].shape)
  x = jnp.where(keep, batch["x"] / 0.9, 0.0)
  pred = x @ params["w"] + params["b"]
  loss = jnp.mean((pred[:, 0] - batch["y"]) ** 2)
  if "coef" in batch:  # Set by a hook, like PPO's KL coefficient.
    loss = loss + batch["coef"] * jnp.sum(params["w"] ** 2)
  return loss


def make_step(loss_name: str = "loss"):
  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, batch, rng):
    loss, grads = jax.value_and_grad(_loss)(state["params"], batch, rng)
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state, "count": state["count"] + 1}
    return new_state, {loss_name: loss, "grad_norm": optax.global_norm(grads)}
  return step


class ToyIterator:
  """Deterministic batches: batch i comes from numpy's generator seeded by (seed, i).

  `seen` records the positions handed out, so tests can check which batches a run consumed.
  `state_kind` picks what get_state returns: a dict, utf-8 JSON bytes or non-utf-8 bytes.
  """

  def __init__(self, seed: int = 0, poison: tuple[int, ...] = (), state_kind: str = "dict",
               length: int | None = None):
    self.seed, self.position, self.poison = seed, 0, set(poison)
    self.state_kind, self.length = state_kind, length
    self.seen: list[int] = []

  def __iter__(self):
    return self

  def __next__(self):
    if self.length is not None and self.position >= self.length:
      raise StopIteration
    g = np.random.default_rng([self.seed, self.position])
    x = g.normal(size=(BATCH, DIM)).astype(np.float32)
    y = (x @ W_TRUE + 0.1 * g.normal(size=BATCH)).astype(np.float32)
    if self.position in self.poison:
      x = np.full_like(x, np.nan)
    self.seen.append(self.position)
    self.position += 1
    return {"x": x, "y": y}

  def get_state(self):
    state = {"seed": self.seed, "position": self.position}
    if self.state_kind == "dict":
      return state
    data = json.dumps(state).encode()
    return data if self.state_kind == "utf8" else b"\xff\xfe" + data

  def set_state(self, state) -> None:
    if isinstance(state, bytes):
      state = json.loads(state[2:] if state.startswith(b"\xff\xfe") else state)
    self.seed, self.position = state["seed"], state["position"]


def assert_trees_bitwise_equal(a, b) -> None:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes(), (x, y)
