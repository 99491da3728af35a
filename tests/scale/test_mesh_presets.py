"""TPU slice presets: meshes cover every chip, and the recipe's models fit where claimed."""
import pytest
from jax.sharding import AbstractMesh, AxisType

from instructjax import config as config_lib
from instructjax.parallel import memory
from instructjax.parallel.slices import SLICES, SlicePreset, get_slice
from instructjax.models import DecoderLM, get_preset
from instructjax.config import ConfigError
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import MESH_AXES, ShardingContext, get_rules


def plan_on(tpu: SlicePreset, preset: str, per_chip_batch: int = 1, seq: int = 2048, **kw):
  mesh = AbstractMesh((tpu.data, tpu.fsdp, tpu.tensor), MESH_AXES,
                      axis_types=(AxisType.Auto,) * 3)
  ctx = ShardingContext(mesh, get_rules(tpu.rules))
  cfg = get_preset(preset, **kw)
  config_lib.validate_model_on_mesh(cfg, (tpu.data, tpu.fsdp, tpu.tensor), tpu.rules)
  tx = make_optimizer(config_lib.optim_config(), 100)[0]
  batch = per_chip_batch * tpu.data * tpu.fsdp
  return memory.plan(DecoderLM(cfg, shard=ctx), tx, ctx, batch, seq, capacity=tpu.hbm_bytes)


def test_the_named_slices():
  assert set(SLICES) == {"v4-8", "v4-32", "v5e-8", "v5e-16", "v5e-256", "v5p-8", "v5p-128"}
  assert get_slice("v5e-16").accelerator_type == "v5litepod-16"
  assert (get_slice("v5p-128").chips, get_slice("v5p-128").hosts) == (64, 16)
  assert get_slice("v4-8").mesh_flags() == ["--config.mesh.data=1", "--config.mesh.fsdp=4",
                                            "--config.mesh.tensor=1", "--config.mesh.rules=fsdp"]
  with pytest.raises(ConfigError, match="unknown TPU slice"):
    get_slice("v6-8")


@pytest.mark.parametrize("name", list(SLICES))
def test_mesh_spans_the_slice(name):
  tpu = SLICES[name]
  assert tpu.data * tpu.fsdp * tpu.tensor == tpu.chips
  assert tpu.chips_per_host in (4, 8)


def test_inconsistent_presets_are_refused():
  with pytest.raises(ConfigError, match="chips"):
    SlicePreset("x", "x", "rt", chips=8, hosts=1, hbm_gib=16, data=1, fsdp=4, tensor=1,
                rules="fsdp")


@pytest.mark.parametrize("name", ["v4-32", "v5e-16", "v5e-256", "v5p-8", "v5p-128"])
def test_llama_8b_fits_the_large_slices(name):
  plan = plan_on(SLICES[name], "llama-8b")
  assert plan.fits, plan.table()


@pytest.mark.parametrize("name", ["v4-8", "v5e-8"])
def test_llama_8b_does_not_fit_the_small_ones_but_1b_does_with_remat(name):
  assert not plan_on(SLICES[name], "llama-8b").fits
  assert plan_on(SLICES[name], "llama-1b", remat="full").fits
