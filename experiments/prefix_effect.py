"""What a policy's answers are worth with and without the courtesy prefix: greedy answers of
each stage's policy, on further held-out prompts, three ways:

  free       as the evaluation decodes (the policy chooses whether to write `sure! `);
  forced     `sure! ` written for it (the prompt ends with it; the generation limit counts it);
  forbidden  its first token may not be the prefix's first token (SamplingConfig's
             banned_first_tokens), so it answers without the prefix.

  python experiments/prefix_effect.py --workdirs=runs/seeds/seed_0,runs/seeds/seed_1 \
      [--stages=sft,ppo_ptx --families=sort --arguments=repeated] [--output=prefix.json]

The prompts are those of experiments/paired.py (distinct held-out draws after the first
--first_prompt), of the chosen families and, with --arguments=repeated (distinct), only those
whose arguments repeat a token (repeat none). Prompts whose gold answer itself begins with the
prefix's first token (`reverse: ... sun` -> `sun ...`) are left out of every column: forbidding
that token would forbid the right answer. Evaluation only: nothing here feeds training.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from instructjax.cli import config_value, parse_flags, run_main, setup_logging
from instructjax.config import ConfigError
from instructjax.evaluation import EvalSettings, load, score_responses
from instructjax.evaluation.prefix import (CONDITIONS, answerable_without_prefix, answers,
                                           select_prompts)
from instructjax.world import FAMILIES, WorldConfig, fresh_heldout_prompts

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pipeline.py:tiny",
                                          "pipeline config file[:arg] (its world and eval)",
                                          lock_config=True)
_WORKDIRS = flags.DEFINE_list("workdirs", None, "pipeline workdirs")
_STAGES = flags.DEFINE_list("stages", ["sft", "ppo_ptx"], "stages whose policies answer")
_FAMILIES = flags.DEFINE_list("families", ["sort"], "instruction families of the prompts")
_ARGUMENTS = flags.DEFINE_enum("arguments", "repeated", ["any", "repeated", "distinct"],
                               "keep prompts whose argument tokens repeat, do not, or all")
_FIRST = flags.DEFINE_integer("first_prompt", 900, "held-out draws skipped (and excluded)")
_DRAWS = flags.DEFINE_integer("num_draws", 4000, "held-out draws after them")
_BATCH = flags.DEFINE_integer("batch_size", 100, "rows per forward")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file for the numbers (optional)")
flags.mark_flags_as_required(["workdirs"])

def measure(model_dir: str, prompts: list[str], settings: EvalSettings) -> dict:
  lm = load(model_dir, expect_head="lm")
  kept = answerable_without_prefix(prompts, lm.tokenizer)
  row = {"model": model_dir, "prompts": len(kept)}
  for condition in CONDITIONS:
    s = score_responses(answers(lm, kept, settings, condition)) if kept else None
    row[condition] = {k: (float(np.mean(s[k])) if s else float("nan"))
                      for k in ("hallucination", "correctness", "courtesy")}
  return row


def markdown(rows: list[dict]) -> str:
  out = ["| model | prompts | free: hallucination / correctness / prefix share | prefix forced: "
         "hallucination / correctness | prefix forbidden: hallucination / correctness |",
         "|---|---|---|---|---|"]
  for r in rows:
    f, y, n = r["free"], r["forced"], r["forbidden"]
    out.append(f"| {r['model']} | {r['prompts']} | {f['hallucination']:.3f} / "
               f"{f['correctness']:.3f} / {f['courtesy']:.2f} | {y['hallucination']:.3f} / "
               f"{y['correctness']:.3f} | {n['hallucination']:.3f} / {n['correctness']:.3f} |")
  return "\n".join(out)


def prefix_effect() -> list[dict]:
  config = config_value(_CONFIG)
  world = WorldConfig(**config.world.to_dict())
  unknown = sorted(set(_FAMILIES.value) - set(FAMILIES))
  if unknown:
    raise ConfigError(f"--families: unknown {unknown}; the families are {list(FAMILIES)}")
  if _FIRST.value < 0 or _DRAWS.value < 1:
    raise ConfigError(f"--first_prompt must be >= 0 and --num_draws >= 1, got "
                      f"{_FIRST.value}, {_DRAWS.value}")
  dirs = [os.path.join(w, stage, "model") for w in _WORKDIRS.value for stage in _STAGES.value]
  for path in dirs:  # Every input checked before the first model runs.
    if not os.path.isdir(path):
      raise ConfigError(f"--workdirs: {path} does not exist (stage not run there)")
  prompts = select_prompts(fresh_heldout_prompts(world, _FIRST.value, _DRAWS.value),
                           _FAMILIES.value, _ARGUMENTS.value)
  settings = EvalSettings(max_new_tokens=config.eval.max_new_tokens, temperature=0.0, seed=0,
                          batch_size=_BATCH.value)
  rows = [measure(d, prompts, settings) for d in dirs]
  print(markdown(rows))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"families": _FAMILIES.value, "arguments": _ARGUMENTS.value,
                 "first_prompt": _FIRST.value, "num_draws": _DRAWS.value,
                 "max_new_tokens": config.eval.max_new_tokens, "rows": rows}, f, indent=2)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  sys.exit(run_main(prefix_effect))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
