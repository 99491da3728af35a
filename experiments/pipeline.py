"""The whole InstructGPT recipe on InstructWorld, evaluated and plotted, in one command.

  python experiments/pipeline.py --config=configs/pipeline.py:tiny --workdir=runs/instructworld

Re-running with the same workdir reuses finished stages and resumes an interrupted one.
Results: <workdir>/eval/results.md (+ results.json and PNG plots).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from instructjax.cli import config_value, parse_flags, run_main, setup_logging
from instructjax.recipe.evaluate import evaluate_pipeline
from instructjax.recipe.run import run_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pipeline.py:tiny",
                                          "pipeline config file[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the run's directory (one sub-directory a stage)")
flags.mark_flags_as_required(["workdir"])


def pipeline() -> dict:
  timings = run_pipeline(config_value(_CONFIG), _WORKDIR.value, evaluate=evaluate_pipeline)
  print("stage wall times (s): " + ", ".join(
      f"{k} {v:.0f}" for k, v in timings.items() if isinstance(v, (int, float))))
  return timings


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  sys.exit(run_main(pipeline))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
