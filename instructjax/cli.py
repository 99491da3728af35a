"""What every command-line entry point shares: console logging, and one clear line for a
user's mistake instead of a traceback.

`run_main(fn)` calls `fn()` and turns the errors a user can fix (a config key, a record of a
data file, a model or checkpoint directory, a busy workdir) into `error: <message>` on stderr
and exit status 2. The message names the key, the file and line, or the directory; the
traceback adds nothing for the user and is shown only with INSTRUCTJAX_TRACEBACK=1. Anything
else is a bug and keeps its traceback. A run stopped by a signal exits 128 + the signal's number
(130 for Ctrl-C, 143 for SIGTERM), and says how to resume; stopped outside the training loop,
it leaves at once (`os._exit`), without the interpreter's teardown.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, Callable

from absl import logging as absl_logging

TRACEBACK_ENV = "INSTRUCTJAX_TRACEBACK"
USAGE_ERROR = 2

_QUIET_PATHS = ("/orbax/", "/etils/", "/grain/", "/jax/_src/")


class _QuietLibraries(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return not any(p in record.pathname for p in _QUIET_PATHS)


def setup_logging() -> None:
  """INSTRUCTJAX's INFO lines; only warnings from libraries whose INFO lines would bury them
  (orbax logs every file it writes)."""
  absl_logging.set_verbosity(absl_logging.INFO)
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def user_errors() -> tuple[type[BaseException], ...]:
  """The exception types that report a user's mistake (their messages say where)."""
  from instructjax.config import ConfigError
  from instructjax.data.errors import DataError
  from instructjax.hf.config import HFConversionError
  from instructjax.training.checkpointing import CheckpointError
  from instructjax.training.nonfinite import NonFiniteError
  return (ConfigError, DataError, HFConversionError, CheckpointError, NonFiniteError)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (the `flags_parser` of `app.run`), with a mistake in a config file or a
  `--config.key=value` override (a mistyped key, an unknown variant) as one line, exit 2."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
      raise
    _say(f"error: {_one_line(e)}")
  sys.exit(USAGE_ERROR)


def config_value(holder, flag: str = "--config"):
  """The ConfigDict of a config_flags holder; a config file that cannot be loaded (which
  ml_collections reports only when the value is first read) as a ConfigError naming the flag."""
  from instructjax.config import ConfigError  # pylint: disable=import-outside-toplevel
  try:
    value = holder.value
    value.keys()  # A config that failed to load raises only when it is first used.
    return value
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise ConfigError(f"{flag}: {lines[-1] if lines else e}") from None


def _one_line(e: BaseException) -> str:
  """A flag error in one line: a config file's exception (which ml_collections reports with its
  traceback inside the message) as "flag ...: <the exception's last line>"."""
  lines = [l for l in str(e).splitlines() if l.strip()]
  if any(l.startswith("Traceback") for l in lines):
    return f"{lines[0].rstrip(':')}: {lines[-1].strip()}"
  text = " ".join(lines)
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1]
  return text.replace("\\'", "'").replace("\\n", " ")


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def run_main(fn: Callable[[], Any]) -> int:
  """Runs `fn`; returns the exit status (see the module docstring)."""
  from instructjax.training import interrupts
  show_traceback = os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
  try:
    result = fn()
  except interrupts.Interrupted as e:
    _say(f"stopped: {e}; run the same command again to resume")
    # Stopped in the middle of device work (sampling, evaluation): leave without the
    # interpreter's teardown, which can crash on buffers that running XLA threads still use.
    # Everything the run wrote is whole (written atomically), so nothing is lost.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + e.signum)
  except user_errors() as e:
    if show_traceback:
      raise
    _say(f"error: {e}")
    return USAGE_ERROR
  if isinstance(result, dict):
    stopped = result.get("stopped", result)
    if stopped.get("stop_reason") == "preempted":
      signum = interrupts.last_signal() or signal.SIGTERM
      _say(f"stopped by {signal.Signals(signum).name} at step {stopped.get('steps')} of "
           f"{stopped.get('stage')}, saved; run the same command again to resume")
      return 128 + signum
  return 0
