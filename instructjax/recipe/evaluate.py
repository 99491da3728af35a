"""The pipeline's evaluation: every model of the recipe on held-out InstructWorld prompts, and
the group-aware comparison (average-aligned PPO-ptx vs group-conditioned PPO-ptx, per group).

Writes into `<workdir>/<config.eval.output_dir>`: results.md, results.json, comparison.png,
curves.png (PPO training curves) and group_alignment.png.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from instructjax import evaluation as ev
from instructjax.recipe.run import is_done, model_path
from instructjax.world.prompts import GROUPS
from instructjax.world.splits import WorldConfig, heldout_prompts, pretrain_heldout_documents

_log = logging.getLogger(__name__)

# (row name, stage, few-shot) in table order.
MAIN_ROWS = (("base", "pretrain", False), ("base_fewshot", "pretrain", True),
             ("sft", "sft", False), ("ppo", "ppo", False), ("ppo_ptx", "ppo_ptx", False))
AVERAGE_ALIGNED = "ppo_ptx"
GROUP_CONDITIONED = "ppo_group"


def _metric(rows, model: str, condition: str, key: str):
  for row in rows:
    if row["model"] == model and row["condition"] == condition:
      return row.get(key)
  return None


def group_alignment_table(main: dict, grouped: dict) -> dict[str, dict[str, Any]]:
  """Per group g: the win rate against SFT under g's utility of the average-aligned policy
  (bare prompts: it does not know the group) and of the group-conditioned policy (prompts
  tagged with g), both from the same held-out prompts."""
  table = {}
  for g in GROUPS:
    table[g] = {
        "average_aligned": _metric(main["rows"], AVERAGE_ALIGNED, ev.instructworld.NO_CONDITION,
                                   f"win_rate_{g}"),
        "group_conditioned": _metric(grouped["rows"], GROUP_CONDITIONED, g, f"win_rate_{g}"),
        "group_conditioned_courtesy_share": _metric(grouped["rows"], GROUP_CONDITIONED, g,
                                                    "courtesy_share"),
        "average_aligned_courtesy_share": _metric(main["rows"], AVERAGE_ALIGNED,
                                                  ev.instructworld.NO_CONDITION,
                                                  "courtesy_share"),
    }
  return table


def _fmt(x) -> str:
  return "-" if x is None else f"{x:.3f}"


def group_markdown(table: dict) -> str:
  lines = ["", "## Group-aware alignment", "",
           f"Win rate against SFT under each labeler group's utility (ties count half): "
           f"`{AVERAGE_ALIGNED}` is aligned to the average labeler (bare prompts); "
           f"`{GROUP_CONDITIONED}` is conditioned on the group (`(polite) ...` prompts, RM and "
           "PPO trained on group-tagged comparisons).", "",
           "| group | average-aligned win rate | group-conditioned win rate | `sure!` share "
           "(average / conditioned) |", "| --- | --- | --- | --- |"]
  for g, r in table.items():
    lines.append(f"| {g} | {_fmt(r['average_aligned'])} | {_fmt(r['group_conditioned'])} | "
                 f"{_fmt(r['average_aligned_courtesy_share'])} / "
                 f"{_fmt(r['group_conditioned_courtesy_share'])} |")
  return "\n".join(lines) + "\n"


def plot_group_alignment(table: dict, path: str) -> None:
  from matplotlib.figure import Figure  # Local: plotting only here.
  fig = Figure(figsize=(5, 3.2))
  ax = fig.subplots()
  groups = list(table)
  for i, (key, label) in enumerate((("average_aligned", "average-aligned"),
                                    ("group_conditioned", "group-conditioned"))):
    vals = [table[g][key] if table[g][key] is not None else 0.0 for g in groups]
    ax.bar([j + 0.38 * i for j in range(len(groups))], vals, width=0.38, label=label)
  ax.axhline(0.5, color="gray", lw=0.8, ls="--")
  ax.set_xticks([j + 0.19 for j in range(len(groups))], groups)
  ax.set_ylabel("win rate vs SFT")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def evaluate_pipeline(config, workdir: str) -> dict[str, Any]:
  e = config.eval
  world = WorldConfig(**config.world.to_dict())
  prompts = heldout_prompts(world)[:e.num_prompts]
  settings = ev.EvalSettings(max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                             few_shot_k=e.few_shot_k, batch_size=e.batch_size, seed=config.seed)
  loaded = {}

  def get(stage, head="lm"):
    if stage not in loaded:
      loaded[stage] = ev.load(model_path(workdir, stage), expect_head=head)
    return loaded[stage]

  specs = [ev.ModelSpec(name, get(stage), few_shot=few)
           for name, stage, few in MAIN_ROWS if is_done(workdir, stage)]
  reference = next((s for s in specs if s.name == "sft"), None)
  rm = get("rm", "scalar") if is_done(workdir, "rm") else None
  docs = pretrain_heldout_documents(world)
  main = ev.evaluate_models(specs, prompts, reference=reference, reward_model=rm,
                            heldout_documents=docs, settings=settings)
  out_dir = os.path.join(workdir, e.output_dir)
  curves = {s: os.path.join(workdir, s) for s in ("ppo", "ppo_ptx", "ppo_group")
            if is_done(workdir, s)}
  paths = ev.write_results(main, out_dir, curves=curves)

  if is_done(workdir, GROUP_CONDITIONED) and reference is not None:
    grouped = ev.evaluate_models(
        [ev.ModelSpec(GROUP_CONDITIONED, get(GROUP_CONDITIONED))], prompts, reference=reference,
        reward_model=get("rm_group", "scalar"), settings=settings, groups=GROUPS)
    table = group_alignment_table(main, grouped)
    with open(paths["markdown"], "a") as f:
      f.write(group_markdown(table))
    main["group_alignment"] = table
    main["group_rows"] = grouped["rows"]
    with open(paths["json"], "w") as f:
      json.dump(main, f, indent=2, sort_keys=True, default=float)
    paths["group_alignment"] = os.path.join(out_dir, "group_alignment.png")
    plot_group_alignment(table, paths["group_alignment"])
  _log.info("results: %s", ", ".join(f"{k}={v}" for k, v in paths.items()))
  with open(paths["markdown"]) as f:
    print(f.read())
  return {"results": main, "paths": paths}
