"""Scalar metrics to TensorBoard event files and a JSONL log, written by host 0 only.

Layout under `workdir`:
  metrics.jsonl   one JSON object per `write` call: {"step": int, "split": str, <name>: value...}
  tensorboard/    tensorboardX event files, tags "<split>/<name>"

Non-finite values are kept (JSONL gets Python's `NaN`/`Infinity`, which `json.loads` reads back),
because a NaN in the log is exactly what someone debugging a run needs to see.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

_log = logging.getLogger(__name__)


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Flattens nested mappings to "a/b" names so every logged value is a scalar."""
  flat = {}
  for name, value in metrics.items():
    key = f"{prefix}{name}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, key + "/"))
    else:
      flat[key] = value
  return flat


def to_scalar(value: Any) -> int | float | None:
  """Converts a jax/numpy/Python scalar (or size-1 array) to a Python number; None if not one."""
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, (int, float)):
    return value
  try:
    arr = np.asarray(jax.device_get(value))
  except (TypeError, ValueError):
    return None
  if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
    return None
  item = arr.reshape(()).item()
  return int(item) if isinstance(item, bool) else item


def scalarize(metrics: Mapping[str, Any]) -> dict[str, int | float]:
  """Flattens `metrics` and converts every value to a Python scalar, dropping non-scalars."""
  out = {}
  for name, value in _flatten(metrics).items():
    scalar = to_scalar(value)
    if scalar is None:
      _log.warning("metric %r is not a scalar (%s); not logged", name, type(value).__name__)
      continue
    out[name] = scalar
  return out


class MetricsWriter:
  """Writes scalar metrics to TensorBoard and `metrics.jsonl`; a no-op on hosts other than 0.

  Args:
    workdir: directory for `metrics.jsonl` and `tensorboard/` (created if needed).
    purge_step: when resuming at step N, pass N + 1: records with step >= purge_step left by the
      interrupted run (logged after its last checkpoint) are dropped from the JSONL and hidden in
      TensorBoard, so curves have no duplicate steps.
    enabled: defaults to `jax.process_index() == 0`.
  """

  def __init__(self, workdir: str, *, purge_step: int | None = None, enabled: bool | None = None):
    self.workdir = workdir
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    if purge_step is not None and os.path.exists(path):
      _purge_jsonl(path, purge_step)
    # Line-buffered append: a crash loses at most the line being written.
    self._jsonl = open(path, "a", buffering=1)
    from tensorboardX import SummaryWriter  # Imported lazily: only host 0 needs it.
    self._tb = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR), purge_step=purge_step,
                             flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> dict[str, Any]:
    """Logs `metrics` (nested mappings allowed) at `step`; returns the scalarized values."""
    if not self.enabled:
      return {}
    values = scalarize(metrics)
    record = {"step": int(step), "split": split, **values}
    self._jsonl.write(json.dumps(record) + "\n")
    for name, value in values.items():
      self._tb.add_scalar(f"{split}/{name}", value, global_step=int(step))
    return values

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled and self._jsonl is not None:
      self._jsonl.close()
      self._tb.close()
      self._jsonl = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _purge_jsonl(path: str, purge_step: int) -> None:
  """Rewrites `path` without records whose step is >= purge_step (atomic replace)."""
  kept = [r for r in _read_jsonl(path) if r.get("step", -1) < purge_step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for record in kept:
      f.write(json.dumps(record) + "\n")
  os.replace(tmp, path)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        # A run killed mid-write leaves a torn last line; everything before it is still good.
        _log.warning("skipping unreadable line in %s: %.80s", path, line)
  return records


def read_metrics(workdir: str, split: str | None = None) -> list[dict[str, Any]]:
  """Returns the records of `workdir/metrics.jsonl` in order, optionally only one split."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = _read_jsonl(path)
  if split is not None:
    records = [r for r in records if r.get("split") == split]
  return records
