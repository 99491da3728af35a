"""Checkpoints: one orbax step directory holds everything needed to resume a run bit-for-bit.

Directory layout (`directory` is usually `<workdir>/checkpoints`):

  model_config.json        written by `write_checkpoint_assets`: how to rebuild the model
  tokenizer/               the tokenizer's own `save(directory)` output
  <step>/                  one orbax step directory per saved step
    state/                 the train state pytree (orbax OCDBT arrays, sharding-agnostic)
    data_iter/metadata     JSON: the data iterator's `get_state()`, one entry per process
    rng/metadata           JSON: the base rng as raw key data (+ impl for typed keys)
    host/metadata          JSON: small host-side state (hook states, counters, KL controller...)
    metrics/metadata       JSON: eval metrics used by keep-best (only when given)

Restoring the state goes through an abstract target (`jax.ShapeDtypeStruct` with `sharding`), so
a checkpoint saved on one mesh restores onto another (different device count, replicated, ...).
Everything is read back through orbax and JSON; nothing is pickled.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import logging
import time
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from instructjax.training.metrics_writer import scalarize

PyTree = Any

MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
_ITEMS = ("state", "data_iter", "rng", "host")

_log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No checkpoint of a run's directory can be read back."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How checkpoints are kept.

  Attributes:
    max_to_keep: the most recent checkpoints kept (None: all). The latest one is always kept, so
      a run can resume even when keep-best is on.
    best_metric: name of a metric passed to `save(metrics=...)` (the loop passes eval metrics);
      when set, the `keep_best` best checkpoints by it are kept as well as the recent ones.
    best_mode: "min" (losses) or "max" (accuracies, rewards).
    keep_best: how many best checkpoints to keep.
    async_save: write in a background thread (`enable_async_checkpointing`); the device->host copy
      still happens inside `save`, so the caller may donate the state right after.
  """
  max_to_keep: int | None = 3
  best_metric: str | None = None
  best_mode: str = "min"
  keep_best: int = 1
  async_save: bool = True

  def __post_init__(self):
    if self.best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {self.best_mode!r}")
    if self.max_to_keep is not None and self.max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {self.max_to_keep}")
    if self.keep_best < 1:
      raise ValueError(f"keep_best must be >= 1, got {self.keep_best}")


@dataclasses.dataclass
class Restored:
  """What `Checkpointer.restore` read back from one step."""
  step: int
  state: PyTree
  data_iter_state: Any  # This process's iterator state (dict, bytes, ...) or None if none saved.
  rng: jax.Array | None
  host: dict[str, Any]


def abstract_like(tree: PyTree) -> PyTree:
  """Maps jax arrays to `ShapeDtypeStruct`s carrying their sharding (restore target)."""
  def one(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------- JSON encodings


def encode_iterator_state(state: Any) -> dict[str, Any]:
  """Makes an iterator state JSON-safe: dicts/lists/numbers as is, bytes as utf-8 or base64."""
  if state is None:
    return {"format": "none"}
  if isinstance(state, (bytes, bytearray)):
    try:
      return {"format": "utf8", "value": bytes(state).decode("utf-8")}
    except UnicodeDecodeError:
      return {"format": "base64", "value": base64.b64encode(bytes(state)).decode("ascii")}
  try:
    json.dumps(state)
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"data iterator state must be JSON-serializable or bytes, got {type(state).__name__}: "
        f"{e}") from e
  return {"format": "json", "value": state}


def decode_iterator_state(encoded: Mapping[str, Any]) -> Any:
  fmt = encoded["format"]
  if fmt == "none":
    return None
  if fmt == "utf8":
    return encoded["value"].encode("utf-8")
  if fmt == "base64":
    return base64.b64decode(encoded["value"])
  if fmt == "json":
    return encoded["value"]
  raise ValueError(f"unknown iterator state format {fmt!r}")


def encode_rng(rng: jax.Array | None) -> dict[str, Any]:
  """Raw key data (+ impl name for new-style typed keys), so any key restores exactly."""
  if rng is None:
    return {"format": "none"}
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    data = np.asarray(jax.device_get(jax.random.key_data(rng)))
    return {"format": "typed", "impl": str(jax.random.key_impl(rng)), "key_data": data.tolist(),
            "dtype": str(data.dtype)}
  data = np.asarray(jax.device_get(rng))
  return {"format": "raw", "key_data": data.tolist(), "dtype": str(data.dtype)}


def decode_rng(encoded: Mapping[str, Any]) -> jax.Array | None:
  fmt = encoded["format"]
  if fmt == "none":
    return None
  data = np.asarray(encoded["key_data"], dtype=encoded["dtype"])
  if fmt == "typed":
    return jax.random.wrap_key_data(data, impl=encoded["impl"])
  if fmt == "raw":
    return jax.numpy.asarray(data)
  raise ValueError(f"unknown rng format {fmt!r}")


def _allgather_strings(s: str) -> list[str]:
  """Every process's `s`, in process order (iterator states differ per host)."""
  if jax.process_count() == 1:
    return [s]
  from jax.experimental import multihost_utils  # Only needed on multi-host runs.
  data = np.frombuffer(s.encode("utf-8"), dtype=np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32)))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [bytes(gathered[i, :int(lengths[i, 0])]).decode("utf-8")
          for i in range(jax.process_count())]


# ----------------------------------------------------------------------------- manager


class Checkpointer:
  """Saves/restores (train state, data iterator state, base rng, host JSON) per step with orbax.

  Must be created and called on every process (orbax coordinates the hosts); JSON items are
  written by the primary host.
  """

  def __init__(self, directory: str, config: CheckpointConfig = CheckpointConfig()):
    self.directory = epath.Path(directory)
    self.config = config
    policies = [checkpoint_managers.LatestN(n=config.max_to_keep)]
    best_fn = None
    if config.best_metric is not None:
      best_fn = _metric_getter(config.best_metric, config.best_mode)
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn,
          # BestN keeps the tail of an ascending sort; for "min" the tail must be the smallest.
          reverse=config.best_mode == "min",
          n=config.keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=config.async_save,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn/best_mode only drive `best_step()`; deletion is the preservation policy's job.
        best_fn=best_fn,
        best_mode=config.best_mode,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  # --- queries

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The best step by `best_metric` (the latest step when keep-best is off)."""
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def metrics(self, step: int) -> dict[str, Any] | None:
    """The metrics saved with `step` (only kept when `best_metric` is set)."""
    return self._manager.metrics(step)

  def reached_preemption(self, step: int) -> bool:
    """True on every host once the cluster signalled preemption (multi-host sync point)."""
    return self._manager.reached_preemption(step)

  # --- save / restore

  def save(self, step: int, state: PyTree, *, data_iter_state: Any = None,
           rng: jax.Array | None = None, host: Mapping[str, Any] | None = None,
           metrics: Mapping[str, Any] | None = None) -> bool:
    """Starts saving `step` (asynchronously if configured); returns False if it already exists.

    Args:
      step: the number of updates the state has seen.
      state: pytree of jax arrays (any sharding). Safe to donate once `save` returns.
      data_iter_state: this process's `iterator.get_state()` (JSON-able or bytes).
      rng: the run's base rng.
      host: small JSON-able host state.
      metrics: scalar metrics for keep-best (ignored by orbax unless `best_metric` is set).
    """
    if step in self._manager.all_steps():
      return False
    iter_states = _allgather_strings(json.dumps(encode_iterator_state(data_iter_state)))
    data_iter_json = {"process_count": len(iter_states),
                      "states": [json.loads(s) for s in iter_states]}
    if metrics is not None:
      metrics = scalarize(metrics)
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=ocp.args.JsonSave(data_iter_json),
            rng=ocp.args.JsonSave(encode_rng(rng)),
            host=ocp.args.JsonSave(dict(host or {})),
        ),
        metrics=metrics,
        force=True,  # The caller decides when to save; orbax's interval policy is not used.
    )

  def restore(self, step: int | None = None, *, target: PyTree = None,
              data_iter: Any = None) -> Restored:
    """Restores `step` (default: the latest).

    Args:
      step: which step; None for the latest.
      target: the state to restore onto: a pytree of jax arrays or `jax.ShapeDtypeStruct`s with
        `sharding` set (see `abstract_like`). Restored arrays get the target's shardings, which
        need not match the ones used when saving. If None, orbax's saved metadata is used
        (only works on the same topology).
      data_iter: if given, its `set_state()` receives this process's saved iterator state.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoints in {self.directory}")
    state_args = (ocp.args.StandardRestore() if target is None
                  else ocp.args.StandardRestore(abstract_like(target)))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=state_args,
        data_iter=ocp.args.JsonRestore(),
        rng=ocp.args.JsonRestore(),
        host=ocp.args.JsonRestore(),
    ))
    for item in ("data_iter", "rng", "host"):
      if not isinstance(getattr(restored, item, None), Mapping):
        # Orbax reads a missing JSON item back as None: resuming without it would silently
        # replay other batches (or lose the host state), so the step counts as damaged.
        raise CheckpointError(f"step {step}: its {item} item is missing or not JSON")
    iter_state = self._this_process_iter_state(restored.data_iter, step)
    if data_iter is not None and iter_state is not None:
      data_iter.set_state(iter_state)
    return Restored(step=step, state=restored.state, data_iter_state=iter_state,
                    rng=decode_rng(restored.rng), host=dict(restored.host))

  def restore_intact(self, *, target: PyTree = None, data_iter: Any = None) -> Restored:
    """Restores the newest step that reads back whole, setting aside the newer ones that do not.

    A kill or a full disk can leave the latest step damaged (a truncated or missing file).
    Steps are tried newest first; damaged steps newer than the one restored are moved to
    `<directory>_damaged/<step>` (kept for inspection, and out of the way of the next save of
    that step) with a warning naming each. If no step restores, nothing is moved and
    `CheckpointError` says which steps failed and why.
    """
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        restored = self.restore(step, target=target, data_iter=data_iter)
      except Exception as e:  # pylint: disable=broad-except  # Any damage: try the previous one.
        failures.append((step, f"{type(e).__name__}: {e}".splitlines()[0][:300]))
        continue
      for bad, why in failures:
        aside = self._set_aside(bad)
        _log.warning("checkpoint step %d in %s does not read back (%s); moved to %s, resuming "
                     "from step %d", bad, self.directory, why, aside, step)
      if failures:
        self._manager.reload()
      return restored
    raise CheckpointError(
        f"no checkpoint in {self.directory} reads back: " +
        "; ".join(f"step {s}: {why}" for s, why in failures) +
        ". Move the directory away to start afresh.")

  def _set_aside(self, step: int) -> str:
    src = os.path.join(str(self.directory), str(step))
    dst_dir = str(self.directory).rstrip("/") + "_damaged"
    dst = os.path.join(dst_dir, str(step))
    if jax.process_index() == 0:
      os.makedirs(dst_dir, exist_ok=True)
      if os.path.exists(dst):
        dst = f"{dst}.{int(time.time())}"
      os.replace(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # Only multi-host runs need it.
      multihost_utils.sync_global_devices(f"instructjax_checkpoint_aside_{step}")
    return dst

  def _this_process_iter_state(self, saved: Mapping[str, Any], step: int) -> Any:
    count = saved["process_count"]
    if count != jax.process_count():
      raise ValueError(
          f"checkpoint step {step} holds data iterator states for {count} processes but this "
          f"run has {jax.process_count()}; the data position cannot be mapped across host counts")
    return decode_iterator_state(saved["states"][jax.process_index()])

  # --- lifecycle

  def wait_until_finished(self) -> None:
    """Blocks until pending async saves are committed (and old steps deleted)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _metric_getter(name: str, mode: str):
  """best_fn over a metrics dict; a checkpoint missing the metric ranks worst, not crashes."""
  worst = float("inf") if mode == "min" else float("-inf")

  def get(metrics: Mapping[str, Any]) -> float:
    value = metrics.get(name) if metrics else None
    return worst if value is None else float(value)
  return get


# ----------------------------------------------------------------------------- assets


def _config_to_dict(model_config: Any) -> dict[str, Any]:
  # A class's own to_dict (ModelConfig, ml_collections.ConfigDict) wins over the generic asdict.
  if hasattr(model_config, "to_dict"):
    return model_config.to_dict()
  if dataclasses.is_dataclass(model_config) and not isinstance(model_config, type):
    return dataclasses.asdict(model_config)
  if isinstance(model_config, Mapping):
    return dict(model_config)
  raise TypeError(f"model_config must be a dataclass, ConfigDict or mapping, got "
                  f"{type(model_config).__name__}")


def write_checkpoint_assets(directory: str, *, model_config: Any = None,
                            tokenizer: Any = None) -> None:
  """Writes `model_config.json` and `tokenizer/` at the top of `directory` (host 0 only).

  A checkpoint directory then describes itself: `read_model_config` + `load_checkpoint_tokenizer`
  rebuild model and tokenizer without the training config. Rewriting on resume is harmless; a
  changed model config is logged as a warning since the saved states would not fit it.
  """
  if jax.process_index() != 0:
    return
  root = epath.Path(directory)
  root.mkdir(parents=True, exist_ok=True)
  if model_config is not None:
    config = _config_to_dict(model_config)
    text = json.dumps(config, indent=2, sort_keys=True)
    path = root / MODEL_CONFIG_FILE
    if path.exists() and json.loads(path.read_text()) != json.loads(text):
      _log.warning("%s differs from the model config of this run; overwriting", path)
    tmp = root / (MODEL_CONFIG_FILE + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)  # Atomic on POSIX, and overwrites on resume.
  if tokenizer is not None:
    tokenizer.save(str(root / TOKENIZER_DIR))


def read_model_config(directory: str) -> dict[str, Any]:
  """The `model_config.json` written by `write_checkpoint_assets`."""
  path = epath.Path(directory) / MODEL_CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"no {MODEL_CONFIG_FILE} in {directory}")
  return json.loads(path.read_text())


def tokenizer_dir(directory: str) -> str:
  return str(epath.Path(directory) / TOKENIZER_DIR)


def load_checkpoint_tokenizer(directory: str) -> Any:
  """The tokenizer saved beside the checkpoints (via `instructjax.tokenizer.load_tokenizer`)."""
  from instructjax.tokenizer import load_tokenizer  # Local: keeps this module tokenizer-agnostic.
  return load_tokenizer(tokenizer_dir(directory))
