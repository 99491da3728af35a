"""SIGTERM and SIGINT: a run told to stop saves a checkpoint and stops, rather than dying
half-way through a step or running on.

Inside `handled()` (what a stage wraps itself in), the first signal that arrives while the
training loop runs (`in_loop()`) only sets a flag: the loop finishes its step, checkpoints and
stops with stop_reason "preempted". A signal anywhere else (sampling, evaluation, writing the
model, whose outputs are all written atomically), or a second signal, raises `Interrupted`
at once. Either way the stage does not count as finished and a re-run resumes it.

Multi-host runs: the hosts must agree on the step they save at, which JAX's preemption service
does for SIGTERM (`jax.distributed` installs its own handler and the checkpointer asks it at
every step). There only SIGINT is handled here, and it stops at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import jax

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """The run was told to stop by a signal outside the point where it can save and stop."""

  def __init__(self, signum: int):
    super().__init__(f"stopped by {signal.Signals(signum).name}")
    self.signum = signum


class _State:
  def __init__(self):
    self.installed = 0
    self.in_loop = False
    self.requested = None  # The signal number of a request the loop has not honoured yet.
    self.last = None  # The last signal received, honoured or not.
    self.raised = None  # A signal whose Interrupted may have been swallowed (see `check`).


_state = _State()


def _handler(signum, frame):
  del frame
  _state.last = signum
  if _state.in_loop and _state.requested is None:
    _state.requested = signum
    return
  _state.raised = signum
  raise Interrupted(signum)


def check() -> None:
  """Raises `Interrupted` if a signal arrived outside the loop and its exception was lost.

  Python runs a signal handler between any two bytecodes of the main thread, also inside a
  garbage-collection callback or a `__del__`, where an exception is printed and ignored. The
  stages call this at the boundaries of their long phases (sampling chunks, evaluations,
  loading, writing) so such a signal still stops the run there.
  """
  if _state.raised is not None:
    raise Interrupted(_state.raised)


@contextlib.contextmanager
def handled() -> Iterator[None]:
  """Installs the handlers (main thread only; nested uses share them) for the duration."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  signums = SIGNALS if jax.process_count() == 1 else (signal.SIGINT,)
  previous = {}
  if _state.installed == 0:
    previous = {s: signal.signal(s, _handler) for s in signums}
  _state.installed += 1
  try:
    yield
  finally:
    _state.installed -= 1
    if _state.installed == 0:
      for s, h in previous.items():
        signal.signal(s, h)
      _state.requested = _state.raised = None


@contextlib.contextmanager
def in_loop() -> Iterator[None]:
  """While the training loop runs: a first signal becomes a request to save and stop."""
  check()
  was = _state.in_loop
  _state.in_loop = True
  try:
    yield
  finally:
    _state.in_loop = was


def stop_requested() -> bool:
  return _state.requested is not None


def last_signal():
  """The number of the last signal this process received inside `handled()`, or None."""
  return _state.last


def take_request() -> None:
  """The loop honoured the request (saved and stopped): later signals raise again."""
  _state.requested = None
