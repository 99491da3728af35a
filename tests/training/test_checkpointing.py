"""Checkpointer: items round-trip, retention policies, resharding on restore, assets."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from instructjax.tokenizer import CharTokenizer
from instructjax.training import (CheckpointConfig, Checkpointer, abstract_like,
                                  load_checkpoint_tokenizer, read_model_config,
                                  write_checkpoint_assets)
from instructjax.training import checkpointing
import training_toy as toy


def _state(value: float = 0.0):
  return {"w": jnp.full((16, 4), value, jnp.float32) + jnp.arange(64.0).reshape(16, 4),
          "n": jnp.int32(int(value))}


@pytest.mark.parametrize("iter_state", [
    {"position": 3, "files": ["a", "b"]},
    b'{"position": 3}',
    b"\x00\xff binary \xfe",
    None,
])
def test_roundtrip_all_items(tmp_path, iter_state):
  state = _state(1.0)
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() is None
    ckpt.save(3, state, data_iter_state=iter_state, rng=jax.random.key(11),
              host={"kl_coef": 0.2, "counters": {"rollouts": 7}})
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 3
    restored = ckpt.restore(target=_state())
  assert restored.step == 3
  toy.assert_trees_bitwise_equal(restored.state, state)
  assert restored.data_iter_state == iter_state
  assert type(restored.data_iter_state) is type(iter_state)
  assert jax.random.key_data(restored.rng).tolist() == jax.random.key_data(
      jax.random.key(11)).tolist()
  assert restored.host == {"kl_coef": 0.2, "counters": {"rollouts": 7}}


def test_raw_uint32_rng_and_iterator_set_state(tmp_path):
  it = toy.ToyIterator(seed=5)
  for _ in range(4):
    next(it)
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, _state(), data_iter_state=it.get_state(), rng=jax.random.PRNGKey(9))
    fresh = toy.ToyIterator(seed=0)
    restored = ckpt.restore(1, target=_state(), data_iter=fresh)
  assert (fresh.seed, fresh.position) == (5, 4)
  assert restored.rng.dtype == jnp.uint32
  np.testing.assert_array_equal(restored.rng, jax.random.PRNGKey(9))


def test_max_to_keep(tmp_path):
  with Checkpointer(str(tmp_path), CheckpointConfig(max_to_keep=2)) as ckpt:
    for step in range(1, 6):
      ckpt.save(step, _state(step))
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [4, 5]
    assert not ckpt.save(5, _state())  # An existing step is not overwritten.
  assert sorted(os.listdir(tmp_path)) == ["4", "5"]


@pytest.mark.parametrize("mode, best", [("min", 4), ("max", 5)])
def test_keep_best(tmp_path, mode, best):
  losses = {1: 5.0, 2: 3.0, 3: 4.0, 4: 1.0, 5: 6.0, 6: None, 7: 2.0}
  cfg = CheckpointConfig(max_to_keep=2, best_metric="loss", best_mode=mode)
  with Checkpointer(str(tmp_path), cfg) as ckpt:
    for step, loss in losses.items():
      ckpt.save(step, _state(step), metrics=None if loss is None else {"loss": jnp.float32(loss)})
      ckpt.wait_until_finished()
    assert ckpt.all_steps() == sorted({best, 6, 7})
    assert ckpt.best_step() == best
  # A new manager over the same directory sees the same best (metrics are stored).
  with Checkpointer(str(tmp_path), cfg) as ckpt:
    assert ckpt.best_step() == best
    assert int(ckpt.restore(best, target=_state()).state["n"]) == best


def test_restore_onto_different_sharding(tmp_path):
  devices = np.array(jax.devices())
  assert devices.size == 8
  mesh8 = Mesh(devices.reshape(8, 1), ("data", "model"))
  state = jax.device_put(_state(2.0), {"w": NamedSharding(mesh8, P("data", None)),
                                       "n": NamedSharding(mesh8, P())})
  expected = jax.device_get(state)
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state)
    ckpt.wait_until_finished()
    # 4 devices, w sharded along the other dimension.
    mesh4 = Mesh(devices[:4].reshape(2, 2), ("data", "model"))
    target4 = {"w": jax.ShapeDtypeStruct((16, 4), jnp.float32,
                                         sharding=NamedSharding(mesh4, P("model", "data"))),
               "n": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh4, P()))}
    r4 = ckpt.restore(1, target=target4).state
    # Fully replicated over a single device.
    single = jax.sharding.SingleDeviceSharding(devices[7])
    r1 = ckpt.restore(1, target=jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single), state)).state
  assert r4["w"].sharding == target4["w"].sharding
  assert len(r4["w"].addressable_shards) == 4
  assert r4["w"].addressable_shards[0].data.shape == (8, 2)
  assert r1["w"].sharding == single
  toy.assert_trees_bitwise_equal(jax.device_get(r4), expected)
  toy.assert_trees_bitwise_equal(jax.device_get(r1), expected)


def test_abstract_like_keeps_sharding():
  mesh = Mesh(np.array(jax.devices()), ("x",))
  x = jax.device_put(jnp.zeros((8, 2)), NamedSharding(mesh, P("x")))
  a = abstract_like({"x": x, "k": 3})
  assert a["x"] == jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=x.sharding)
  assert a["k"] == 3


def test_no_pickle_files(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, _state(), data_iter_state={"p": 1}, rng=jax.random.key(0), host={"a": 1})
  for root, _, files in os.walk(tmp_path):
    for f in files:
      with open(os.path.join(root, f), "rb") as fh:
        assert not fh.read(2).startswith(b"\x80"), f"pickle-looking file {f}"
  # JSON items are human-readable.
  with open(tmp_path / "1" / "host" / "metadata") as f:
    assert json.load(f) == {"a": 1}


@dataclasses.dataclass
class _ModelConfig:
  vocab_size: int = 10
  num_layers: int = 2


def test_checkpoint_assets(tmp_path):
  tok = CharTokenizer("abc")
  write_checkpoint_assets(str(tmp_path), model_config=_ModelConfig(), tokenizer=tok)
  assert read_model_config(str(tmp_path)) == {"vocab_size": 10, "num_layers": 2}
  assert load_checkpoint_tokenizer(str(tmp_path)) == tok
  # Assets sit beside the step directories without confusing orbax.
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(2, _state())
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2]
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [2]
  with pytest.raises(FileNotFoundError):
    read_model_config(str(tmp_path / "missing"))


def test_encoders_reject_unserializable_state():
  with pytest.raises(TypeError, match="JSON-serializable"):
    checkpointing.encode_iterator_state({"a": object()})
