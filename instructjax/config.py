"""Building blocks of the ml_collections config files in configs/, and their validation.

Config files call these to build a ConfigDict and `lock()` it, so a mistyped key on the command
line (`--config.optim.lrr=1e-3`) fails at parse time with the key's name. `validate_*` checks
combinations (batch vs mesh, heads vs KV heads, ...) before anything is compiled; every
message names the config key at fault, and entry points print it as one line
(`instructjax.cli`).

This module sits below every other one (models, parallel and data raise its ConfigError), so
what it needs from them is imported inside the functions that use it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
  """A configuration value or combination is invalid; the message names the key."""


# Fields of the model config that describe how to run, not what the weights are: a stage that
# starts from a saved model takes these from its config and everything else from the model.
RUNTIME_MODEL_FIELDS = {"dtype": str, "param_dtype": str, "remat": str, "scan_layers": bool,
                        "dropout_rate": float}


def model_config(preset: str, **overrides) -> ml_collections.ConfigDict:
  """Every ModelConfig field of a named preset, each overridable from the command line."""
  from instructjax.models.presets import get_preset
  return ml_collections.ConfigDict(get_preset(preset, **overrides).to_dict())


def runtime_model_config() -> ml_collections.ConfigDict:
  """The model section of a config whose model is a checkpoint (`init_from`): only the run-time
  fields, each None ("as the checkpoint has it") until set (`--config.model.dtype=bfloat16`)."""
  return ml_collections.ConfigDict(
      {k: config_dict.placeholder(t) for k, t in RUNTIME_MODEL_FIELDS.items()})


def is_runtime_only(model_cfg) -> bool:
  """A model section without architecture (`runtime_model_config`): the model is init_from's."""
  return "family" not in model_cfg


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1,
                rules: str = "dp") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules))


def optim_config(lr: float = 1e-3, warmup_steps: int = 50, decay: str = "cosine",
                 final_lr_fraction: float = 0.1, weight_decay: float = 0.01, b1: float = 0.9,
                 b2: float = 0.95, eps: float = 1e-8, grad_clip: float = 1.0,
                 grad_accum_steps: int = 1) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr=lr, warmup_steps=warmup_steps, decay=decay, final_lr_fraction=final_lr_fraction,
      weight_decay=weight_decay, b1=b1, b2=b2, eps=eps, grad_clip=grad_clip,
      grad_accum_steps=grad_accum_steps))


def train_config(batch_size: int, num_steps: int, log_every: int = 10, eval_every: int = 100,
                 eval_batches: int = 4, save_every: int = 200, max_to_keep: int = 2,
                 keep_best_metric: str = "", keep_best_mode: str = "auto",
                 on_nonfinite: str = "raise", stop_after: int = 0,
                 allow_early_end: bool = False) -> ml_collections.ConfigDict:
  """stop_after > 0 ends this invocation at that step (time-sliced or preemptible jobs); the
  learning-rate schedule still follows num_steps, and re-running resumes. A stage that stops
  before num_steps writes a checkpoint but no final model, unless the data ran out and
  allow_early_end is set. keep_best_metric: an evaluation metric whose best checkpoints are
  kept besides the latest ones; keep_best_mode "auto" minimises losses and KLs, maximises the
  rest (stages/runner.py)."""
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size, num_steps=num_steps, log_every=log_every, eval_every=eval_every,
      eval_batches=eval_batches, save_every=save_every, max_to_keep=max_to_keep,
      keep_best_metric=keep_best_metric, keep_best_mode=keep_best_mode,
      on_nonfinite=on_nonfinite, stop_after=stop_after, allow_early_end=allow_early_end))


def to_model_config(model_cfg, prefix: str = "model"):
  """ConfigDict -> validated ModelConfig; errors name `config.<prefix>.<key>`. A runtime-only
  section (`runtime_model_config`) is validated on the default architecture."""
  from instructjax.models.config import ModelConfig
  d = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ConfigError(f"config.{prefix}: unknown keys {unknown}")
  return ModelConfig(**{k: v for k, v in d.items() if v is not None}).validate(prefix)


def validate_mesh(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  from instructjax.parallel.sharding import RULE_PRESETS, resolve_mesh_shape
  if mesh_cfg.rules not in RULE_PRESETS:
    raise ConfigError(f"config.mesh.rules: {mesh_cfg.rules!r} is not one of {sorted(RULE_PRESETS)}")
  return resolve_mesh_shape(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, num_devices)


def validate_batch(batch_size: int, mesh_shape: tuple[int, int, int], key: str = "train.batch_size",
                   grad_accum_steps: int = 1) -> None:
  dp = mesh_shape[0] * mesh_shape[1]
  if batch_size <= 0:
    raise ConfigError(f"config.{key}: must be positive, got {batch_size}")
  if batch_size % dp:
    raise ConfigError(f"config.{key}={batch_size} is not divisible by the data-parallel size "
                      f"{dp} (mesh data={mesh_shape[0]} x fsdp={mesh_shape[1]})")


def validate_model_on_mesh(model, mesh_shape: tuple[int, int, int], rules: str,
                           prefix: str = "model") -> None:
  tensor = mesh_shape[2]
  if tensor > 1 and "tp" in rules:
    for key in ("n_heads", "n_kv_heads", "d_ff"):
      if getattr(model, key) % tensor:
        raise ConfigError(f"config.{prefix}.{key}={getattr(model, key)} is not divisible by "
                          f"config.mesh.tensor={tensor}")


def validate_common(config, num_devices: int, model_prefixes=("model",)) -> tuple[int, int, int]:
  """The checks every stage shares. Returns the resolved mesh shape."""
  mesh_shape = validate_mesh(config.mesh, num_devices)
  for prefix in model_prefixes:
    model = to_model_config(config[prefix], prefix)
    if not is_runtime_only(config[prefix]):  # Else the stage checks init_from's architecture.
      validate_model_on_mesh(model, mesh_shape, config.mesh.rules, prefix)
  validate_batch(config.train.batch_size, mesh_shape)
  if config.train.on_nonfinite not in ("raise", "skip"):
    raise ConfigError(f"config.train.on_nonfinite: {config.train.on_nonfinite!r} is not "
                      "'raise' or 'skip'")
  if config.train.stop_after < 0:
    raise ConfigError(f"config.train.stop_after: must be >= 0, got {config.train.stop_after}")
  for key in ("num_steps", "log_every", "eval_every", "save_every"):
    if config.train[key] <= 0:
      raise ConfigError(f"config.train.{key}: must be positive, got {config.train[key]}")
  for key in ("optim", "value_optim"):
    if key in config:
      validate_optim(config[key], key)
  return mesh_shape


def validate_optim(optim, prefix: str = "optim") -> None:
  """The optimizer settings make_optimizer needs, checked before anything is loaded."""
  from instructjax.training.optim import DECAYS
  if optim.lr <= 0:
    raise ConfigError(f"config.{prefix}.lr: must be positive, got {optim.lr}")
  if optim.decay not in DECAYS:
    raise ConfigError(f"config.{prefix}.decay: {optim.decay!r} is not one of {DECAYS}")
  if optim.warmup_steps < 0:
    raise ConfigError(f"config.{prefix}.warmup_steps: must be >= 0, got {optim.warmup_steps}")
  if optim.grad_accum_steps < 1:
    raise ConfigError(f"config.{prefix}.grad_accum_steps: must be >= 1, got "
                      f"{optim.grad_accum_steps}")


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """`"tiny"` or `"tiny,model=gpt2-124m,steps=10"`: first item is the variant, then key=value."""
  out = dict(defaults)
  parts = [p for p in (arg or "").split(",") if p]
  if parts and "=" not in parts[0]:
    out["variant"] = parts.pop(0)
  for p in parts:
    if "=" not in p:
      raise ConfigError(f"config argument {p!r}: expected key=value")
    k, v = p.split("=", 1)
    if k not in out:
      raise ConfigError(f"config argument {k!r} is not one of {sorted(out)}")
    default = out[k]
    out[k] = type(default)(v) if default is not None and not isinstance(default, bool) else (
        v.lower() in ("1", "true", "yes") if isinstance(default, bool) else v)
  return ml_collections.ConfigDict(out)


def data_config(seq_len: int, pack: bool, source: str = "instructworld",
                **world_overrides) -> ml_collections.ConfigDict:
  """Where a stage's records come from (instructjax/stages/inputs.py) and how they are cut."""
  from instructjax.world.splits import WorldConfig  # Local: world is only needed here.
  world = dataclasses.asdict(WorldConfig(**world_overrides))
  return ml_collections.ConfigDict(dict(
      source=source, world=world, seq_len=seq_len, pack=pack, on_error="raise", adapter="",
      # add_bos: the tokenizer's BOS before every sequence (instructjax/data/SCHEMAS.md);
      # truncate: cut what does not fit seq_len (False: such a record is an error).
      add_bos=False, truncate=True,
      train_path="", eval_path="", tfds_name="", tfds_data_dir="", train_split="train",
      eval_split="validation"))
