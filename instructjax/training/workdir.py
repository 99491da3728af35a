"""A run's directory, claimed by one run at a time.

Two runs on one workdir would write the same checkpoints and logs (one of them crashes, hangs
at exit, or both write), so a run holds an exclusive lock on `<workdir>/.lock` for its whole
life. The lock is an `flock`: the kernel releases it when the process dies, so a run killed
with -9 never leaves a stale lock behind. In a multi-host run only process 0 locks (every host
writes its shards into the same directory). A directory this run created and left empty (a
mistake found before anything was written) is removed again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Iterator

import jax

from instructjax.config import ConfigError

LOCK_FILE = ".lock"


def _check_usable(path: str, key: str) -> None:
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"{key}: {path} exists and is not a directory")
  parent = path
  while not os.path.exists(parent):  # The deepest part that exists must let us create the rest.
    parent = os.path.dirname(parent)
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"{key}: {parent} is not writable" + (
        "" if parent == path else f" (needed to create {path})"))


@contextlib.contextmanager
def claimed(workdir: str, key: str = "--workdir") -> Iterator[str]:
  """Creates (if needed) and locks `workdir` for the duration; yields its absolute path.

  Raises ConfigError naming `key` when the path is a file, is not writable, or is in use by
  another run (with that run's pid, host and start time).
  """
  path = os.path.abspath(workdir)
  _check_usable(path, key)
  if jax.process_index() != 0:
    yield path
    return
  created = not os.path.exists(path)
  os.makedirs(path, exist_ok=True)
  lock_path = os.path.join(path, LOCK_FILE)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ConfigError(f"{key}: {path} is in use by another run ({_holder(fd)}); wait for it "
                        "to finish or use another workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    try:
      yield path
    finally:
      os.unlink(lock_path)  # Before unlocking: a run that starts now makes its own file.
      if created and not os.listdir(path):
        os.rmdir(path)
  finally:
    os.close(fd)


def _holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info:
    return "its details are not written yet"
  return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
