"""Runs experiments/train.py in fresh processes: N CPU devices each, optionally as one
multi-process JAX run (a coordinator on 127.0.0.1 at a free port, gloo collectives)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Mapping, Sequence

from instructjax.recipe import sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "experiments", "train.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cpu_env(num_devices: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
  """The test process's environment with its own device count (XLA_FLAGS is read at start-up)."""
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", TOKENIZERS_PARALLELISM="false")
  for key in ("INSTRUCTJAX_COORDINATOR", "INSTRUCTJAX_NUM_PROCESSES", "INSTRUCTJAX_PROCESS_ID"):
    env.pop(key, None)
  env.update(extra or {})
  return env


def train_command(config: str, workdir: str, overrides: Mapping[str, object],
                  extra_flags: Sequence[str] = ()) -> list[str]:
  return [sys.executable, TRAIN, f"--config={config}", f"--workdir={workdir}",
          *sweeps.override_flags(overrides), *extra_flags]


class Launch:
  """Processes started together; `wait()` checks they all succeeded. Output goes to files,
  not pipes: a full pipe would stall a process that its peers wait on in a collective."""

  def __init__(self, commands_envs: Sequence[tuple[list[str], dict[str, str]]], what: str):
    self.what = what
    self.logs = [tempfile.NamedTemporaryFile("w+") for _ in commands_envs]
    self.procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   text=True) for (cmd, env), log in zip(commands_envs, self.logs)]

  def _raised(self) -> bool:
    for log in self.logs:
      log.flush()
      with open(log.name) as f:
        if "Traceback (most recent call last)" in f.read():
          return True
    return False

  def wait(self, timeout: float = 300) -> list[str]:
    """Every process's output; one failing ends the others (they would wait on it forever)."""
    deadline = time.time() + timeout
    try:
      while True:
        codes = [p.poll() for p in self.procs]  # Every process polled: any() would stop early.
        if all(c is not None for c in codes) or any(codes) or time.time() > deadline:
          break
        if self._raised():
          break  # A JAX process that raised waits in the shutdown barrier for its peers.
        time.sleep(0.5)
    finally:
      for p in self.procs:  # Only our own children, by handle.
        if p.poll() is None:
          p.kill()
          p.wait()
    outputs = []
    for log in self.logs:
      log.seek(0)
      outputs.append(log.read())
      log.close()
    failed = [(i, p.returncode) for i, p in enumerate(self.procs)
              if p.returncode or "Traceback (most recent call last)" in outputs[i]]
    if failed:
      tails = "\n".join(f"--- process {i} (rc {rc}):\n{outputs[i][-4000:]}" for i, rc in failed)
      raise AssertionError(f"{self.what} failed:\n{tails}")
    return outputs


def start_single(config: str, workdir: str, overrides: Mapping[str, object],
                 num_devices: int) -> Launch:
  return Launch([(train_command(config, workdir, overrides), cpu_env(num_devices))],
                f"train.py on {num_devices} devices")


def multi_runs(config: str, workdir: str, overrides: Mapping[str, object], num_processes: int,
               devices_per_process: int) -> list[tuple[list[str], dict[str, str]]]:
  """(command, environment) of each process of one multi-process run on this machine."""
  port = free_port()
  runs = []
  for rank in range(num_processes):
    env = cpu_env(devices_per_process, {
        "INSTRUCTJAX_COORDINATOR": f"127.0.0.1:{port}",
        "INSTRUCTJAX_NUM_PROCESSES": str(num_processes),
        "INSTRUCTJAX_PROCESS_ID": str(rank)})
    # The session's compilation cache (conftest) is written without a lock: the ranks, which
    # compile the same programs at the same moment, would read each other's half-written files.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs.append((train_command(config, workdir, overrides), env))
  return runs


def start_multi(config: str, workdir: str, overrides: Mapping[str, object], num_processes: int,
                devices_per_process: int) -> Launch:
  """One training run as `num_processes` JAX processes on this machine."""
  return Launch(multi_runs(config, workdir, overrides, num_processes, devices_per_process),
                f"{num_processes}-process train.py")
