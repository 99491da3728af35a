"""Prints the per-device memory plan of training a model preset on a mesh; allocates nothing.

  python experiments/memory_plan.py --preset=llama-8b --mesh=data=1,fsdp=8,tensor=1 \
      --rules=fsdp --batch=8 --seq=2048 [--remat=full] [--hbm_gib=16]
  python experiments/memory_plan.py --preset=llama-8b --slice=v5e-16 --batch=16 --seq=2048
  python experiments/memory_plan.py --all_presets --mesh=fsdp=8 --rules=fsdp --batch=8 --seq=1024

The mesh is abstract (`jax.sharding.AbstractMesh`), so a 256-chip plan runs on a laptop. The
formula and what it leaves out: instructjax/memory.py. --backend is the accelerator the run
will use (tpu with --slice): it decides which attention kernel `model.attention=auto` runs,
hence the activation formula.
"""
from __future__ import annotations

import json

from absl import app, flags
from jax.sharding import AbstractMesh, AxisType

from instructjax import config as config_lib
from instructjax.parallel import memory
from instructjax.parallel.slices import SLICES, get_slice
from instructjax.models import PRESET_NAMES, DecoderLM, get_preset
from instructjax.config import ConfigError
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import MESH_AXES, RULE_PRESETS, ShardingContext, get_rules

_PRESET = flags.DEFINE_enum("preset", "llama-8b", PRESET_NAMES, "model preset")
_ALL = flags.DEFINE_bool("all_presets", False, "one table per model preset")
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=8,tensor=1",
                            "mesh axes as data=..,fsdp=..,tensor=.. (missing axes: 1)")
_RULES = flags.DEFINE_enum("rules", "fsdp", sorted(RULE_PRESETS), "sharding rules")
_SLICE = flags.DEFINE_enum("slice", None, list(SLICES),
                           "a TPU slice: its mesh, rules and HBM (overrides --mesh/--rules)")
_BATCH = flags.DEFINE_integer("batch", 8, "global batch size (sequences)")
_SEQ = flags.DEFINE_integer("seq", 2048, "sequence length")
_REMAT = flags.DEFINE_enum("remat", None, list(memory.REMAT_POLICIES),
                           "override the preset's remat policy")
_DTYPE = flags.DEFINE_string("dtype", None, "override the compute dtype")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", None, "override the parameter dtype")
_HBM = flags.DEFINE_float("hbm_gib", None, "device memory to check the plan against")
_JSON = flags.DEFINE_string("json", None, "also write the plan(s) as JSON to this path")
_BACKEND = flags.DEFINE_enum("backend", "tpu", ["cpu", "gpu", "tpu"],
                             "the backend of the run (the attention kernel auto selects)")
_ATTENTION = flags.DEFINE_string("attention", None, "override model.attention")


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'data=2,fsdp=4' -> (2, 4, 1)."""
  shape = dict.fromkeys(MESH_AXES, 1)
  for part in filter(None, text.split(",")):
    key, _, value = part.partition("=")
    if key not in shape or not value.isdigit() or int(value) < 1:
      raise ConfigError(f"--mesh: {part!r} is not <axis>=<positive int> with axis in {MESH_AXES}")
    shape[key] = int(value)
  return tuple(shape[a] for a in MESH_AXES)


def abstract_context(shape: tuple[int, int, int], rules: str) -> ShardingContext:
  mesh = AbstractMesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return ShardingContext(mesh, get_rules(rules))


def plan_preset(name: str, shape: tuple[int, int, int], rules: str, batch: int, seq: int,
                capacity: int | None, backend: str = "tpu",
                **model_overrides) -> memory.MemoryPlan:
  cfg = get_preset(name, **{k: v for k, v in model_overrides.items() if v is not None})
  config_lib.validate_model_on_mesh(cfg, shape, rules)
  ctx = abstract_context(shape, rules)
  tx, _ = make_optimizer(config_lib.optim_config(), total_steps=1000)
  return memory.plan(DecoderLM(cfg, shard=ctx), tx, ctx, batch, seq, rules_name=rules,
                     label=name, capacity=capacity, backend=backend)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  shape, rules = parse_mesh(_MESH.value), _RULES.value
  capacity = int(_HBM.value * 2 ** 30) if _HBM.value else None
  if _SLICE.value:
    tpu = get_slice(_SLICE.value)
    shape, rules = (tpu.data, tpu.fsdp, tpu.tensor), tpu.rules
    capacity = capacity or tpu.hbm_bytes
  overrides = dict(remat=_REMAT.value, dtype=_DTYPE.value, param_dtype=_PARAM_DTYPE.value,
                   attention=_ATTENTION.value)
  backend = "tpu" if _SLICE.value else _BACKEND.value
  names = PRESET_NAMES if _ALL.value else (_PRESET.value,)
  plans = [plan_preset(n, shape, rules, _BATCH.value, _SEQ.value, capacity, backend,
                       **overrides) for n in names]
  print("\n\n".join(p.table() for p in plans))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump([p.to_dict() for p in plans], f, indent=2)


if __name__ == "__main__":
  app.run(main)
