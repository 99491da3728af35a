"""The command lines that create, set up, launch on, watch, stop and delete a TPU VM slice.

Every function returns argv lists (nothing runs here); experiments/tpu/tpu_vm.py runs or prints
them. A run on a slice is the same train.py command on every worker (`--worker=all`), with
`--distributed.mode=auto` so that JAX finds its peers from the TPU metadata, the slice's mesh
preset (instructjax/mesh_presets.py) as config overrides, its output in `~/logs/<run>.log` and
its process id in `~/logs/<run>.pid` on each worker.

Multi-host workdirs must be one directory every worker sees (orbax writes each host's shards
of a checkpoint there): a Filestore/NFS mount or a gcsfuse-mounted bucket, e.g.
/mnt/shared/runs/x. The stages write with POSIX file calls, so gs:// URLs are refused.
"""
from __future__ import annotations

import dataclasses
import shlex
from typing import Mapping, Optional, Sequence

from instructjax.parallel.slices import SlicePreset

GCLOUD_TPU = ("gcloud", "compute", "tpus", "tpu-vm")
REMOTE_REPO = "~/instructjax"
REMOTE_TARBALL = "~/instructjax.tar.gz"
LOG_DIR = "~/logs"


@dataclasses.dataclass(frozen=True)
class Target:
  """Which TPU VM: its name, zone and (optionally) project."""
  name: str
  zone: str
  project: Optional[str] = None

  def flags(self) -> list[str]:
    out = [f"--zone={self.zone}"]
    if self.project:
      out.append(f"--project={self.project}")
    return out


def _tilde(path: str) -> str:
  """Shell-quotes `path` but leaves a leading ~/ for the remote shell to expand."""
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)


def create_command(t: Target, tpu: SlicePreset, spot: bool = False,
                   runtime_version: Optional[str] = None,
                   extra: Sequence[str] = ()) -> list[str]:
  cmd = [*GCLOUD_TPU, "create", t.name, *t.flags(),
         f"--accelerator-type={tpu.accelerator_type}",
         f"--version={runtime_version or tpu.runtime_version}"]
  if spot:
    cmd.append("--spot")
  return cmd + list(extra)


def ssh_command(t: Target, remote: str, worker: str = "all") -> list[str]:
  return [*GCLOUD_TPU, "ssh", t.name, *t.flags(), f"--worker={worker}", f"--command={remote}"]


def scp_command(t: Target, local: str, remote: str, worker: str = "all") -> list[str]:
  return [*GCLOUD_TPU, "scp", local, f"{t.name}:{remote}", *t.flags(), f"--worker={worker}"]


def describe_command(t: Target) -> list[str]:
  return [*GCLOUD_TPU, "describe", t.name, *t.flags(),
          "--format=table(name.basename(),state,health,acceleratorType,runtimeVersion)"]


def delete_command(t: Target) -> list[str]:
  return [*GCLOUD_TPU, "delete", t.name, *t.flags(), "--quiet"]


def setup_commands(t: Target, repo: str, tarball: str = "/tmp/instructjax.tar.gz",
                   extras: str = "") -> list[list[str]]:
  """Ships the repository's committed tree to every worker and installs it with jax[tpu]."""
  package = "." if not extras else f".[{extras}]"
  install = (f"mkdir -p {REMOTE_REPO} && tar -xzf {REMOTE_TARBALL} -C {REMOTE_REPO} && "
             f"cd {REMOTE_REPO} && python3 -m pip install -q -U pip && "
             f"python3 -m pip install -q -e {shlex.quote(package)} 'jax[tpu]'")
  return [["git", "-C", repo, "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"],
          scp_command(t, tarball, REMOTE_TARBALL), ssh_command(t, install)]


def check_workdir(workdir: str, tpu: SlicePreset) -> None:
  """Refuses workdirs the stages cannot share across the slice's hosts."""
  if "://" in workdir:
    raise ValueError(f"workdir {workdir!r}: the stages write with POSIX file calls; mount the "
                     "bucket (gcsfuse) or a Filestore share and give its path")
  if tpu.hosts > 1 and not workdir.startswith("/"):
    raise ValueError(f"workdir {workdir!r}: {tpu.name} has {tpu.hosts} hosts, which must all "
                     "write one checkpoint directory; give an absolute path on a shared mount")


def train_argv(config: str, workdir: str, tpu: SlicePreset,
               overrides: Optional[Mapping[str, object]] = None) -> list[str]:
  """train.py's arguments on a slice: JAX-detected distributed set-up, the slice's mesh."""
  mesh = {f"mesh.{k}": v for k, v in dict(data=tpu.data, fsdp=tpu.fsdp, tensor=tpu.tensor,
                                          rules=tpu.rules).items()}
  flags = {**mesh, **(overrides or {})}
  return ["python3", "experiments/train.py", f"--config={config}", f"--workdir={workdir}",
          "--distributed.mode=auto", *[f"--config.{k}={v}" for k, v in flags.items()]]


def launch_command(t: Target, run: str, config: str, workdir: str, tpu: SlicePreset,
                   overrides: Optional[Mapping[str, object]] = None) -> list[str]:
  """Starts train.py on every worker, detached from the ssh session (setsid nohup)."""
  check_workdir(workdir, tpu)
  log, pid = f"{LOG_DIR}/{run}.log", f"{LOG_DIR}/{run}.pid"
  train = " ".join(shlex.quote(a) for a in train_argv(config, workdir, tpu, overrides))
  remote = (f"mkdir -p {LOG_DIR} && cd {REMOTE_REPO} && "
            f"(setsid nohup {train} > {_tilde(log)} 2>&1 < /dev/null & echo $! > {_tilde(pid)})")
  return ssh_command(t, remote)


def watch_command(t: Target, run: str, lines: int = 50, follow: bool = True,
                  worker: str = "0") -> list[str]:
  """Tails one worker's log (worker 0 is the one that logs metrics)."""
  tail = f"tail -n {int(lines)}{' -F' if follow else ''} {_tilde(f'{LOG_DIR}/{run}.log')}"
  return ssh_command(t, tail, worker=worker)


def status_commands(t: Target, run: str) -> list[list[str]]:
  """The slice's state, then on every worker whether the run's process is alive."""
  pid, log = _tilde(f"{LOG_DIR}/{run}.pid"), _tilde(f"{LOG_DIR}/{run}.log")
  remote = (f"if kill -0 $(cat {pid} 2>/dev/null) 2>/dev/null; "
            f"then echo \"$(hostname): running\"; "
            f"else echo \"$(hostname): not running\"; fi; tail -n 2 {log} 2>/dev/null || true")
  return [describe_command(t), ssh_command(t, remote)]


def stop_command(t: Target, run: str) -> list[str]:
  """Ends the run on every worker by its recorded process id (not by name)."""
  pid = _tilde(f"{LOG_DIR}/{run}.pid")
  return ssh_command(t, f"if [ -f {pid} ]; then kill $(cat {pid}) 2>/dev/null || true; fi")
