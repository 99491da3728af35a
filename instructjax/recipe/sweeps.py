"""Sweeps: lists of config overrides, their run directories, and a summary of their results.

A sweep file `configs/sweeps/NAME.py` defines `get_sweep()` returning a list of override dicts
(dotted config keys -> values), built with the helpers here:

  from instructjax.recipe.sweeps import axis, chain, product, zip_

  def get_sweep():
    return chain(
        product(axis("optim.lr", [1e-4, 3e-4]), axis("seed", [0, 1])),   # 4 runs
        zip_(axis("ppo.kl.init_beta", [0.05, 0.15]), axis("ppo.ptx_coef", [0.0, 1.0])))  # 2 runs

Keyword arguments are shorthand for `axis`, with "__" for ".": `product(optim__lr=[...])`.
experiments/sweep.py runs each point in `<workdir>/<index>-<short name>` and writes the
summary table (`summary_rows`, `to_markdown`) from each run's metrics.jsonl.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from instructjax.config import ConfigError

Override = dict[str, Any]
SCALARS = (bool, int, float, str)
DEFAULT_METRICS = ("eval/*", "train/*loss*", "train/*reward*", "train/*kl*")

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- building sweeps


def axis(key: str, values: Iterable[Any]) -> list[Override]:
  """One config key over several values: [{key: v} for v in values]."""
  values = list(values)
  if not values:
    raise ConfigError(f"sweep axis {key!r} has no values")
  return [{key: v} for v in values]


def _axes(sweeps: Sequence[Sequence[Override]], kwargs: Mapping[str, Iterable[Any]]
          ) -> list[list[Override]]:
  return [list(s) for s in sweeps] + [axis(k.replace("__", "."), v) for k, v in kwargs.items()]


def _merge(points: Sequence[Override]) -> Override:
  out: Override = {}
  for p in points:
    clash = set(out) & set(p)
    if clash:
      raise ConfigError(f"sweep keys {sorted(clash)} are set twice in one run")
    out.update(p)
  return out


def product(*sweeps: Sequence[Override], **axes: Iterable[Any]) -> list[Override]:
  """Every combination; the last axis varies fastest."""
  return [_merge(points) for points in itertools.product(*_axes(sweeps, axes))]


def zip_(*sweeps: Sequence[Override], **axes: Iterable[Any]) -> list[Override]:
  """Point i combines the i-th entry of each axis; the axes must have equal lengths."""
  parts = _axes(sweeps, axes)
  lengths = {len(p) for p in parts}
  if len(lengths) > 1:
    raise ConfigError(f"zip_ needs axes of equal length, got lengths {sorted(lengths)}")
  return [_merge(points) for points in zip(*parts)]


def chain(*sweeps: Sequence[Override]) -> list[Override]:
  """Concatenation: the runs of each sweep, one after another."""
  return [dict(p) for s in sweeps for p in s]


def with_fixed(sweep: Sequence[Override], **fixed: Any) -> list[Override]:
  """Adds the same overrides to every run ("__" for "." in names)."""
  extra = {k.replace("__", "."): v for k, v in fixed.items()}
  return [_merge([p, extra]) for p in sweep]


# ----------------------------------------------------------------------------- sweep files


def validate_sweep(sweep: Any, where: str = "sweep") -> list[Override]:
  if not isinstance(sweep, (list, tuple)) or not sweep:
    raise ConfigError(f"{where}: get_sweep() must return a non-empty list of dicts")
  for i, point in enumerate(sweep):
    if not isinstance(point, Mapping):
      raise ConfigError(f"{where}: run {i} is a {type(point).__name__}, not a dict")
    for key, value in point.items():
      if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise ConfigError(f"{where}: run {i}: {key!r} is not a dotted config key")
      if not isinstance(value, SCALARS):
        raise ConfigError(f"{where}: run {i}: {key}={value!r} is not a bool, int, float or str")
  return [dict(p) for p in sweep]


def load_sweep(path: str) -> list[Override]:
  """Imports a sweep file and returns its validated `get_sweep()`."""
  if not os.path.isfile(path):
    raise ConfigError(f"--sweep: {path} is not a file")
  spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} defines no get_sweep()")
  return validate_sweep(module.get_sweep(), path)


def load_config(spec: str):
  """`path/to/config.py[:arg]` -> the ConfigDict its get_config(arg) returns."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config: {path} is not a file")
  module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def apply_overrides(config, overrides: Mapping[str, Any]):
  """A locked copy of `config` with dotted overrides; an unknown key or wrong type raises."""
  config = config.copy_and_resolve_references()
  config.lock()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    try:
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, AttributeError):
      raise ConfigError(f"sweep override {key!r}: no such config key") from None
    except TypeError as e:
      raise ConfigError(f"sweep override {key}={value!r}: {e}") from None
  return config


def format_value(value: Any) -> str:
  if isinstance(value, float):
    return repr(value)
  return str(value)


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  return [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]


def varying_keys(sweep: Sequence[Mapping[str, Any]]) -> list[str]:
  """Keys whose value is not the same in every run (in first-seen order)."""
  keys: list[str] = []
  for point in sweep:
    keys += [k for k in point if k not in keys]
  missing = object()
  return [k for k in keys if len({repr(p.get(k, missing)) for p in sweep}) > 1]


def short_name(overrides: Mapping[str, Any], keys: Optional[Sequence[str]] = None,
               max_len: int = 60) -> str:
  """'kl_coef=0.02,lr=0.0003' from the last part of each key (of `keys` only, if given);
  safe as a directory name."""
  parts = [f"{k.split('.')[-1]}={format_value(v)}" for k, v in overrides.items()
           if keys is None or k in keys]
  name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts)) or "base"
  return name[:max_len]


def run_dirs(workdir: str, sweep: Sequence[Mapping[str, Any]]) -> list[str]:
  """`<workdir>/<index>-<short name>` per run, named by the keys that vary across the sweep."""
  keys = varying_keys(sweep) if len(sweep) > 1 else None
  return [os.path.join(workdir, f"{i}-{short_name(p, keys)}") for i, p in enumerate(sweep)]


# ----------------------------------------------------------------------------- running


# runner(config_spec, base_config, run_workdir, overrides) -> exit status (0 = success).
Runner = Callable[[str, Any, str, dict], int]


def launch_command(train_script: str, config_spec: str, run_workdir: str,
                   overrides: Mapping[str, Any]) -> list[str]:
  """The train.py command line of one run."""
  return [sys.executable, train_script, f"--config={config_spec}", f"--workdir={run_workdir}",
          *override_flags(overrides)]


def checked_points(sweep: Sequence[Override], config_spec: str, fixed: Mapping[str, Any]
                   ) -> tuple[Any, list[tuple[Override, Override, str]]]:
  """(base config, [(point, all overrides, run name)]); every override is applied to the
  config first, so a typo fails before any run starts."""
  base = load_config(config_spec)
  names = [os.path.basename(d) for d in run_dirs("", sweep)]
  out = []
  for point, name in zip(sweep, names):
    overrides = {**fixed, **point}
    apply_overrides(base, overrides)
    out.append((point, overrides, name))
  return base, out


def launch_commands(train_script: str, sweep: Sequence[Override], config_spec: str,
                    workdir: str, fixed: Optional[Mapping[str, Any]] = None
                    ) -> list[list[str]]:
  """Each run's train.py command line, checked against the config."""
  _, points = checked_points(sweep, config_spec, fixed or {})
  return [launch_command(train_script, config_spec, os.path.join(workdir, name), overrides)
          for _, overrides, name in points]


def is_done(run_workdir: str) -> bool:
  """A finished run leaves its model directory (every stage ends by writing one)."""
  return os.path.isfile(os.path.join(run_workdir, "model", "model_config.json"))


def run_sweep(sweep: Sequence[Override], config_spec: str, workdir: str,
              fixed: Mapping[str, Any], runner: Runner,
              stop_on_failure: bool = False) -> list[dict[str, Any]]:
  """Runs each point not finished before, one after another; returns the summary rows."""
  base, points = checked_points(sweep, config_spec, fixed)
  rows = []
  for i, (point, overrides, name) in enumerate(points):
    run_workdir = os.path.join(workdir, name)
    start = time.time()
    if is_done(run_workdir):
      status = "done before"
    else:
      _log.info("sweep run %d/%d: %s", i + 1, len(points), run_workdir)
      rc = runner(config_spec, base, run_workdir, overrides)
      status = "ok" if rc == 0 else f"failed (rc {rc})"
    step, metrics = final_metrics(run_workdir)
    rows.append({"index": i, "name": name, "workdir": run_workdir, "overrides": point,
                 "status": status, "step": step, "wall_s": round(time.time() - start, 1),
                 "metrics": metrics})
    if stop_on_failure and status.startswith("failed"):
      break
  return rows


# ----------------------------------------------------------------------------- summaries


def final_metrics(run_workdir: str) -> tuple[Optional[int], dict[str, float]]:
  """(last step, {"<split>/<name>": last value}) from a run's metrics.jsonl."""
  path = os.path.join(run_workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None, {}
  last: dict[str, float] = {}
  step = None
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      record = json.loads(line)
      split = record.pop("split", "train")
      s = record.pop("step", None)
      if s is not None:
        step = s if step is None else max(step, s)
      for name, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          last[f"{split}/{name}"] = value
  return step, last


def select_metrics(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
  """Names matching any glob pattern, in pattern order, then name order."""
  names = sorted(set(names))
  out: list[str] = []
  for pattern in patterns:
    out += [n for n in names if fnmatch.fnmatch(n, pattern) and n not in out]
  return out


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.4g}"
  return "" if value is None else str(value)


def to_markdown(rows: Sequence[Mapping[str, Any]],
                patterns: Sequence[str] = DEFAULT_METRICS) -> str:
  """The sweep as a markdown table: run, its overrides, status, step and final metrics."""
  keys: list[str] = []
  for r in rows:
    keys += [k for k in r["overrides"] if k not in keys]
  metrics = select_metrics((m for r in rows for m in r["metrics"]), patterns)
  header = ["#", "run", *keys, "status", "step", *metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r["index"], r["name"], *(r["overrides"].get(k) for k in keys), r["status"],
             r["step"], *(r["metrics"].get(m) for m in metrics)]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  return "\n".join(lines)


def write_summary(workdir: str, rows: Sequence[Mapping[str, Any]],
                  patterns: Sequence[str] = DEFAULT_METRICS) -> tuple[str, str]:
  """Writes `sweep_summary.md` and `sweep_summary.json` into `workdir`; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  md_path = os.path.join(workdir, "sweep_summary.md")
  json_path = os.path.join(workdir, "sweep_summary.json")
  with open(md_path, "w") as f:
    f.write(to_markdown(rows, patterns) + "\n")
  with open(json_path, "w") as f:
    json.dump(list(rows), f, indent=2, sort_keys=True)
  return md_path, json_path
