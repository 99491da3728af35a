"""Console logging for entry points: INFO for instructjax, warnings only from libraries whose
INFO lines would bury the run's own progress (orbax logs every file it writes)."""
import logging

from absl import logging as absl_logging

_QUIET_PATHS = ("/orbax/", "/etils/", "/grain/", "/jax/_src/")


class _QuietLibraries(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return not any(p in record.pathname for p in _QUIET_PATHS)


def setup_logging() -> None:
  absl_logging.set_verbosity(absl_logging.INFO)
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
