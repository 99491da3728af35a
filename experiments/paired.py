"""Paired comparison of two stages' policies of pipeline runs on many further held-out prompts:
hallucination rates (exact McNemar test, bootstrap interval) and correctness (bootstrap
interval), greedy, one row per workdir (e.g. each seed of experiments/seeds.py).

  python experiments/paired.py --workdirs=runs/seeds/seed_0,runs/seeds/seed_1,runs/seeds/seed_2 \
      [--a=sft --b=ppo_ptx --first_prompt=900 --num_draws=4000] [--output=paired.json]

The prompts are InstructWorld held-out prompts (the pipeline config's world) drawn after the
first --first_prompt ones (the pipeline evaluates the first 200; development choices used
300-899), kept once each and only if none of the first --first_prompt draws is the same prompt:
about 2450 distinct prompts from 4000 draws. The pipeline's table reads 200 prompts, which
cannot tell rates of 1% and 2% apart; this can. Evaluation only: nothing here feeds training.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from instructjax.cli import config_value, parse_flags, run_main, setup_logging
from instructjax.config import ConfigError
from instructjax.evaluation import EvalSettings, generate_responses, load, score_responses
from instructjax.evaluation.paired import compare_flags, compare_means
from instructjax.world import WorldConfig, fresh_heldout_prompts

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pipeline.py:tiny",
                                          "pipeline config file[:arg] (its world and eval)",
                                          lock_config=True)
_WORKDIRS = flags.DEFINE_list("workdirs", None, "pipeline workdirs, one row each")
_A = flags.DEFINE_string("a", "sft", "stage of the reference policy")
_B = flags.DEFINE_string("b", "ppo_ptx", "stage of the compared policy")
_FIRST = flags.DEFINE_integer("first_prompt", 900, "held-out draws skipped (and excluded)")
_DRAWS = flags.DEFINE_integer("num_draws", 4000, "held-out draws after them")
_BATCH = flags.DEFINE_integer("batch_size", 100, "rows per forward")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file for the numbers (optional)")
flags.mark_flags_as_required(["workdirs"])


def compare_workdir(workdir: str, prompts: list[str], settings: EvalSettings) -> dict:
  scored = {stage: score_responses(generate_responses(
      load(os.path.join(workdir, stage, "model"), expect_head="lm"), prompts, settings))
            for stage in (_A.value, _B.value)}
  a, b = scored[_A.value], scored[_B.value]
  return {"workdir": workdir, "prompts": len(prompts),
          "hallucination": compare_flags(a["hallucination"], b["hallucination"]),
          "correctness": compare_means(a["correctness"], b["correctness"])}


def markdown(rows: list[dict]) -> str:
  a, b = _A.value, _B.value
  out = [f"| workdir | prompts | hallucination {a} / {b} | {b} - {a} [95% CI] | only {a} / "
         f"only {b} / both | McNemar p | correctness {a} / {b} | {b} - {a} [95% CI] |",
         "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    h, c = r["hallucination"], r["correctness"]
    out.append(
        f"| {r['workdir']} | {r['prompts']} | {h['rate_a']:.4f} / {h['rate_b']:.4f} | "
        f"{h['difference']:+.4f} [{h['ci_low']:+.4f}, {h['ci_high']:+.4f}] | {h['only_a']} / "
        f"{h['only_b']} / {h['both']} | {h['mcnemar_p']:.3f} | {c['mean_a']:.4f} / "
        f"{c['mean_b']:.4f} | {c['difference']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] |")
  return "\n".join(out)


def paired() -> list[dict]:
  config = config_value(_CONFIG)
  world = WorldConfig(**config.world.to_dict())
  if _FIRST.value < 0 or _DRAWS.value < 1:
    raise ConfigError(f"--first_prompt must be >= 0 and --num_draws >= 1, got "
                      f"{_FIRST.value}, {_DRAWS.value}")
  for workdir in _WORKDIRS.value:  # Every input checked before the first model runs.
    for stage in (_A.value, _B.value):
      path = os.path.join(workdir, stage, "model")
      if not os.path.isdir(path):
        raise ConfigError(f"--workdirs: {path} does not exist (stage {stage!r} not run there)")
  prompts = fresh_heldout_prompts(world, _FIRST.value, _DRAWS.value)
  settings = EvalSettings(max_new_tokens=config.eval.max_new_tokens, temperature=0.0, seed=0,
                          batch_size=_BATCH.value)
  rows = [compare_workdir(w, prompts, settings) for w in _WORKDIRS.value]
  print(markdown(rows))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"a": _A.value, "b": _B.value, "first_prompt": _FIRST.value,
                 "num_draws": _DRAWS.value, "max_new_tokens": config.eval.max_new_tokens,
                 "rows": rows}, f, indent=2)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  sys.exit(run_main(paired))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
