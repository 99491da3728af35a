"""Evaluates model directories on held-out InstructWorld prompts, or on TruthfulQA-style MC.

InstructWorld (results.md, results.json, comparison.png, curves.png in --output_dir):
  python experiments/evaluate.py --output_dir=runs/x/eval \
      --models=base=runs/x/pretrain/model,sft=runs/x/sft/model,ppo=runs/x/ppo/model,\
ppo_ptx=runs/x/ppo_ptx/model \
      --reward_model=runs/x/rm/model --ppo_workdirs=ppo=runs/x/ppo,ppo_ptx=runs/x/ppo_ptx \
      [--num_prompts=200 --max_new_tokens=48 --temperature=0 --few_shot_k=2 --seed=0]
      [--group_conditioned] [--world_seed=0 --world_num_heldout=500 ...]
  The model named `base` is also evaluated few-shot, as `base_fewshot`. Win rates and KL are
  against --sft (default: the model named `sft`; a --sft not among --models is added as `sft`).
  The held-out prompts are those of InstructWorld's WorldConfig(seed=--world_seed, sizes from
  the --world_* flags; the defaults are WorldConfig()'s): give the training run's world settings
  so that the prompts are held out from what the models were trained on.

TruthfulQA-style multiple choice (truthfulqa.md, truthfulqa.json in --output_dir):
  python experiments/evaluate.py --truthfulqa=mc_task.jsonl --models=sft=...,ppo=... \
      --output_dir=runs/x/eval_tqa
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from absl import app, flags

from instructjax.evaluation import (EvalSettings, ModelSpec, evaluate_models, evaluate_truthfulqa,
                                    load, load_items, results_table, write_results)
from instructjax.evaluation.truthfulqa import truthfulqa_markdown
from instructjax.cli import setup_logging
from instructjax.world import GROUPS, WorldConfig, heldout_prompts, pretrain_heldout_documents

_DEFAULT_WORLD = WorldConfig()

_MODELS = flags.DEFINE_string("models", None, "name=DIR,name=DIR,... policy model directories")
_SFT = flags.DEFINE_string("sft", None, "reference policy for win rates and KL "
                           "(default: the model named sft)")
_RM = flags.DEFINE_string("reward_model", None, "scalar-head model directory for RM scores")
_PPO_WORKDIRS = flags.DEFINE_string("ppo_workdirs", None,
                                    "name=WORKDIR,... PPO workdirs whose metrics.jsonl to plot")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "where the results go")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 200, "held-out prompts evaluated "
                                    "(the held-out split's, from --first_prompt on)")
_FIRST_PROMPT = flags.DEFINE_integer(
    "first_prompt", 0, "index of the first held-out prompt evaluated: with --world_num_heldout "
    "above the pipeline's 300, --first_prompt=300 gives prompts drawn after the pipeline's "
    "(development prompts; held-out prompts are drawn with replacement, so short prompts of "
    "small families, repeat above all, recur)")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "generation limit per response")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "sampling temperature (0 = greedy)")
_TOP_K = flags.DEFINE_integer("top_k", 0, "top-k filter (0 = off)")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus filter (1 = off)")
_FEW_SHOT_K = flags.DEFINE_integer("few_shot_k", 2, "exemplars per few-shot prompt (fewer "
                                   "where k do not fit the context)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling and exemplar seed")
_BATCH = flags.DEFINE_integer("batch_size", 32, "rows per forward")
_GROUP_CONDITIONED = flags.DEFINE_bool("group_conditioned", False,
                                       "also evaluate on (group)-conditioned prompts per group")
_NUM_DOCS = flags.DEFINE_integer("num_heldout_docs", None, "held-out pretraining documents for "
                                 "the LM loss (default all; 0 = skip the LM loss)")
_ADD_BOS = flags.DEFINE_bool("add_bos", False, "prepend BOS (match the training data pipeline)")
_TRUTHFULQA = flags.DEFINE_string("truthfulqa", None, "TruthfulQA multiple-choice JSONL: "
                                  "score --models on it instead of InstructWorld")
_WORLD_SEED = flags.DEFINE_integer("world_seed", _DEFAULT_WORLD.seed, "InstructWorld seed")
_WORLD_SIZES = {
    name: flags.DEFINE_integer(f"world_{name}", getattr(_DEFAULT_WORLD, name),
                               f"WorldConfig.{name}")
    for name in ("num_sft", "num_rm", "num_ppo", "num_heldout", "num_pretrain",
                 "num_pretrain_heldout")}
flags.mark_flags_as_required(["models", "output_dir"])

_log = logging.getLogger(__name__)


def parse_named(value: str | None, flag: str) -> dict[str, str]:
  """`a=x,b=y` -> {"a": "x", "b": "y"} (order kept; names unique)."""
  out: dict[str, str] = {}
  for part in (value or "").split(","):
    if not part.strip():
      continue
    name, sep, path = part.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
      raise app.UsageError(f"--{flag}: expected name=PATH, got {part!r}")
    if name in out:
      raise app.UsageError(f"--{flag}: name {name!r} given twice")
    out[name] = path
  return out


def world_config() -> WorldConfig:
  return WorldConfig(seed=_WORLD_SEED.value,
                     **{name: flag.value for name, flag in _WORLD_SIZES.items()})


def run_truthfulqa(model_dirs: dict[str, str], out_dir: str) -> dict:
  items = load_items(_TRUTHFULQA.value)
  results = {}
  for name, directory in model_dirs.items():
    t0 = time.time()
    results[name] = evaluate_truthfulqa(load(directory, expect_head="lm"), items,
                                        batch_size=_BATCH.value, add_bos=_ADD_BOS.value)
    _log.info("%s: MC1 %.3f MC2 %.3f (%.1fs)", name, results[name]["mc1"], results[name]["mc2"],
              time.time() - t0)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "truthfulqa.json"), "w") as f:
    json.dump({"file": os.path.abspath(_TRUTHFULQA.value), "models": model_dirs,
               "results": results}, f, indent=2, sort_keys=True)
  with open(os.path.join(out_dir, "truthfulqa.md"), "w") as f:
    f.write(truthfulqa_markdown(results))
  return results


def prompt_slice(world: WorldConfig, first: int, num: int) -> list[str]:
  """Held-out prompts first .. first + num - 1 (the world's held-out list is drawn in order, so
  a larger num_heldout keeps the first ones and adds new ones after them)."""
  if first < 0 or num < 1 or first + num > world.num_heldout:
    raise app.UsageError(f"--first_prompt={first} --num_prompts={num}: the world has "
                         f"{world.num_heldout} held-out prompts (--world_num_heldout)")
  return heldout_prompts(world)[first:first + num]


def run_instructworld(model_dirs: dict[str, str], out_dir: str) -> dict:
  world = world_config()
  prompts = prompt_slice(world, _FIRST_PROMPT.value, _NUM_PROMPTS.value)
  loaded = {name: load(d, expect_head="lm") for name, d in model_dirs.items()}
  specs = []
  for name, lm in loaded.items():
    specs.append(ModelSpec(name, lm))
    if name == "base":
      specs.append(ModelSpec("base_fewshot", lm, few_shot=True))
  reference = None
  if _SFT.value:
    sft = next((s for s in specs if s.lm.directory == os.path.abspath(_SFT.value)
                and not s.few_shot), None)
    if sft is None:
      if "sft" in loaded:
        raise app.UsageError("--sft names a directory other than the model named sft")
      sft = ModelSpec("sft", load(_SFT.value, expect_head="lm"))
      specs.append(sft)
    reference = sft
  elif "sft" in loaded:
    reference = next(s for s in specs if s.name == "sft")
  else:
    _log.warning("no SFT reference (--sft or a model named sft): no win rates, no KL")
  reward_model = load(_RM.value, expect_head="scalar") if _RM.value else None
  docs = None
  if _NUM_DOCS.value != 0:
    docs = pretrain_heldout_documents(world)
    if _NUM_DOCS.value is not None:
      docs = docs[:_NUM_DOCS.value]
  settings = EvalSettings(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                          top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value,
                          batch_size=_BATCH.value, few_shot_k=_FEW_SHOT_K.value,
                          add_bos=_ADD_BOS.value)
  results = evaluate_models(specs, prompts, reference=reference, reward_model=reward_model,
                            heldout_documents=docs, settings=settings,
                            groups=GROUPS if _GROUP_CONDITIONED.value else ())
  results["settings"].update({"world": dataclasses.asdict(world), "models": model_dirs,
                              "first_prompt": _FIRST_PROMPT.value})
  paths = write_results(results, out_dir, curves=parse_named(_PPO_WORKDIRS.value,
                                                             "ppo_workdirs") or None)
  print(results_table(results["rows"]))
  _log.info("wrote %s", ", ".join(sorted(paths.values())))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  model_dirs = parse_named(_MODELS.value, "models")
  if not model_dirs:
    raise app.UsageError("--models names no model")
  if _TRUTHFULQA.value:
    run_truthfulqa(model_dirs, _OUTPUT_DIR.value)
  else:
    run_instructworld(model_dirs, _OUTPUT_DIR.value)


if __name__ == "__main__":
  app.run(main)
