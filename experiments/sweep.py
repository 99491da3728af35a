"""Runs a sweep of one stage config locally, one run after another, then tabulates the results.

  python experiments/sweep.py --sweep=configs/sweeps/kl_coef.py --config=configs/ppo.py:tiny \
      --workdir=runs/sweep_kl [--set=init_from=runs/x/sft/model --set=...] [--dry_run]

Run i of `get_sweep()` trains in `<workdir>/<i>-<short name>` (e.g. `0-init_beta=0.01`) via
experiments/train.py in its own process (a failed run does not stop the others; its status is
recorded), or in this process with --in_process. A run whose model directory exists is not
run again. Every override is checked against the config before anything starts. At the end
`<workdir>/sweep_summary.md` and `.json` hold each run's final metrics (from metrics.jsonl).
--dry_run prints the commands and writes nothing.
"""
from __future__ import annotations

import ast
import logging
import os
import shlex
import subprocess
import sys

from absl import app, flags

from instructjax.cli import setup_logging
from instructjax.recipe import sweeps

_SWEEP = flags.DEFINE_string("sweep", None, "sweep file defining get_sweep()")
_CONFIG = flags.DEFINE_string("config", None, "stage config file[:arg], as for train.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "one subdirectory per run goes here")
_SET = flags.DEFINE_multi_string("set", [], "key=value applied to every run (before the sweep's)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the launch commands, run nothing")
_IN_PROCESS = flags.DEFINE_bool("in_process", False, "run the stages in this process")
_STOP_ON_FAILURE = flags.DEFINE_bool("stop_on_failure", False, "stop at the first failed run")
_METRICS = flags.DEFINE_list("metrics", list(sweeps.DEFAULT_METRICS),
                             "glob patterns of the metrics in the markdown table")
flags.mark_flags_as_required(["sweep", "config", "workdir"])

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")


def parse_set(items: list[str]) -> dict[str, object]:
  """--set key=value pairs; values are Python literals (0.1, 5, True) or else strings."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--set {item!r}: expected key=value")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value  # Paths and names.
  return out


def command(config_spec: str, run_workdir: str, overrides: dict[str, object]) -> list[str]:
  return sweeps.launch_command(TRAIN, config_spec, run_workdir, overrides)


def subprocess_runner(config_spec: str, base_config, run_workdir: str,
                      overrides: dict[str, object]) -> int:
  """train.py in its own process (fresh JAX, a crash stays contained); its exit status."""
  del base_config
  os.makedirs(run_workdir, exist_ok=True)
  with open(os.path.join(run_workdir, "sweep_run.log"), "w") as log:
    return subprocess.call(command(config_spec, run_workdir, overrides), stdout=log,
                           stderr=subprocess.STDOUT)


def in_process_runner(config_spec: str, base_config, run_workdir: str,
                      overrides: dict[str, object]) -> int:
  del config_spec
  from instructjax.stages.registry import run_stage  # Only in-process runs need JAX here.
  try:
    run_stage(sweeps.apply_overrides(base_config, overrides), run_workdir)
  except Exception:  # pylint: disable=broad-except  # Recorded; the sweep goes on.
    logging.exception("run %s failed", run_workdir)
    return 1
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  points = sweeps.load_sweep(_SWEEP.value)
  fixed = parse_set(_SET.value)
  if _DRY_RUN.value:
    for cmd in sweeps.launch_commands(TRAIN, points, _CONFIG.value, _WORKDIR.value, fixed):
      print(shlex.join(cmd))
    return
  runner = in_process_runner if _IN_PROCESS.value else subprocess_runner
  rows = sweeps.run_sweep(points, _CONFIG.value, _WORKDIR.value, fixed, runner,
                          _STOP_ON_FAILURE.value)
  md_path, json_path = sweeps.write_summary(_WORKDIR.value, rows, _METRICS.value)
  with open(md_path) as f:
    print(f.read())
  print(f"summary: {md_path}, {json_path}")
  if any(r["status"].startswith("failed") for r in rows):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
