"""The recipe over several seeds: each seed's numbers, their mean and 95% confidence interval,
the replication's targets checked seed by seed, and plots with error bars.

A seed's numbers come from its pipeline workdir: `eval/results.json` (the evaluation table and
the group-alignment table), `rm*/rm_results.json` (held-out pairwise accuracy and the labelers'
ceiling) and the PPO stages' held-out evaluation curves (`metrics.jsonl`, split "eval").
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from instructjax.evaluation.report import read_curves

MODELS = ("sft", "ppo", "ppo_ptx")  # Evaluation rows summarised (bare prompts).
MODEL_METRICS = ("correctness", "exact_match", "win_rate_plain", "win_rate_polite",
                 "reward_score", "kl_to_sft", "heldout_lm_loss", "courtesy_share",
                 "hallucination_rate")
RM_STAGES = ("rm", "rm_group")
CURVE_STAGES = ("ppo", "ppo_ptx", "ppo_group")
CURVE_KEYS = ("eval/score", "eval/correctness", "eval/hallucination_rate")


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def seed_metrics(workdir: str) -> dict[str, float]:
  """One seed's numbers as a flat {"<model>/<metric>" | "<rm>/<metric>" | "group/...": value}.

  Missing files (a stage skipped) leave their keys out.
  """
  out: dict[str, float] = {}
  results = _read_json(os.path.join(workdir, "eval", "results.json"))
  if results is not None:
    for row in results["rows"]:
      if row["model"] in MODELS and row.get("condition", "none") == "none":
        for key in MODEL_METRICS:
          if row.get(key) is not None:
            out[f"{row['model']}/{key}"] = float(row[key])
    for group, cols in (results.get("group_alignment") or {}).items():
      for col in ("average_aligned", "group_conditioned"):
        if col in cols:
          out[f"group/{group}/{col}"] = float(cols[col])
  for stage in RM_STAGES:
    rm = _read_json(os.path.join(workdir, stage, "rm_results.json"))
    if rm is None:
      continue
    out[f"{stage}/heldout_accuracy"] = float(rm["heldout"]["accuracy"])
    ceiling = rm.get("labeler_ceiling") or {}
    # Each RM against the utility its comparisons were ranked by: the plain RM's labelers
    # mix the groups' utilities, the group-conditioned RM's rank by the tagged group's.
    key = ("group_utility_pair_accuracy" if stage == "rm_group"
           else "mixed_utility_pair_accuracy")
    if ceiling.get(key) is not None:
      out[f"{stage}/labeler_ceiling"] = float(ceiling[key])
  return out


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
  """(mean, half-width of the two-sided Student-t confidence interval); nan width for n < 2."""
  from scipy import stats  # pylint: disable=g-import-not-at-top  # A jax dependency; lazy.
  x = np.asarray(values, np.float64)
  if x.size == 0:
    return math.nan, math.nan
  if x.size < 2:
    return float(x[0]), math.nan
  sem = x.std(ddof=1) / math.sqrt(x.size)
  return float(x.mean()), float(stats.t.ppf(0.5 + level / 2, x.size - 1) * sem)


def summarize(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
  """{key: {"mean", "ci95", "n", "values": {seed: value}}} over the seeds that have the key."""
  keys = sorted({k for row in per_seed.values() for k in row})
  out = {}
  for key in keys:
    values = {s: row[key] for s, row in sorted(per_seed.items()) if key in row}
    mean, ci = mean_ci(list(values.values()))
    out[key] = {"mean": mean, "ci95": ci, "n": len(values), "values": values}
  return out


def targets(m: Mapping[str, float]) -> dict[str, Optional[bool]]:
  """The replication's targets for one seed (None where a number is missing).

  The pretraining-loss regressions are each policy's held-out LM loss minus SFT's; PPO-ptx's
  may be at most half of PPO's (and at most zero when PPO has none).
  """
  def have(*keys):
    return all(k in m for k in keys)

  def check(ok, *keys):
    return bool(ok()) if have(*keys) else None

  def ptx_tax():
    ppo = m["ppo/heldout_lm_loss"] - m["sft/heldout_lm_loss"]
    ptx = m["ppo_ptx/heldout_lm_loss"] - m["sft/heldout_lm_loss"]
    return ptx <= max(ppo, 0.0) / 2

  return {
      "rm accuracy >= 0.68": check(lambda: m["rm/heldout_accuracy"] >= 0.68,
                                   "rm/heldout_accuracy"),
      "rm_group accuracy >= 0.68": check(lambda: m["rm_group/heldout_accuracy"] >= 0.68,
                                         "rm_group/heldout_accuracy"),
      "ppo_ptx plain win >= 0.6": check(lambda: m["ppo_ptx/win_rate_plain"] >= 0.6,
                                        "ppo_ptx/win_rate_plain"),
      "ppo_ptx correctness >= sft - 0.01": check(
          lambda: m["ppo_ptx/correctness"] >= m["sft/correctness"] - 0.01,
          "ppo_ptx/correctness", "sft/correctness"),
      "ppo_ptx LM-loss regression <= ppo's / 2": check(
          ptx_tax, "ppo/heldout_lm_loss", "ppo_ptx/heldout_lm_loss", "sft/heldout_lm_loss"),
      "polite: conditioned win > average-aligned": check(
          lambda: m["group/polite/group_conditioned"] > m["group/polite/average_aligned"],
          "group/polite/group_conditioned", "group/polite/average_aligned"),
      "ppo_ptx hallucination <= sft": check(
          lambda: m["ppo_ptx/hallucination_rate"] <= m["sft/hallucination_rate"],
          "ppo_ptx/hallucination_rate", "sft/hallucination_rate"),
  }


def _fmt(x: Optional[float]) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _mark(ok: Optional[bool]) -> str:
  return {True: "yes", False: "**no**", None: "n/a"}[ok]


def markdown(summary: Mapping[str, Mapping[str, Any]],
             per_seed_targets: Mapping[int, Mapping[str, Optional[bool]]],
             missing: Sequence[int] = ()) -> str:
  seeds = sorted(per_seed_targets)
  lines = [f"# InstructWorld over {len(seeds)} seeds ({', '.join(map(str, seeds))})", ""]
  if missing:
    lines += [f"Seeds without results (failed or unfinished): {list(missing)}.", ""]
  lines += ["Mean and 95% confidence interval (Student t over seeds), then each seed's value.",
            "", "| number | mean | 95% CI | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|---|---|" + "---|" * len(seeds)]
  for key, s in summary.items():
    ci = "n/a" if math.isnan(s["ci95"]) else f"± {s['ci95']:.3f}"
    vals = " | ".join(_fmt(s["values"].get(seed)) for seed in seeds)
    lines.append(f"| {key} | {_fmt(s['mean'])} | {ci} | {vals} |")
  names = list(next(iter(per_seed_targets.values()), {}))
  lines += ["", "## Targets, seed by seed", "",
            "| target | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---|" * len(seeds)]
  for name in names:
    lines.append(f"| {name} | " + " | ".join(_mark(per_seed_targets[s][name]) for s in seeds)
                 + " |")
  return "\n".join(lines) + "\n"


def plot_summary(summary: Mapping[str, Mapping[str, Any]], path: str) -> None:
  """One panel per model metric: a bar per model at the mean, the 95% CI as an error bar and
  each seed as a dot; a last panel for the reward models against their labelers' ceilings."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  # Lazy: heavy.
  panels = [(metric, [(m, f"{m}/{metric}") for m in MODELS]) for metric in MODEL_METRICS]
  panels.append(("reward model accuracy", [
      (f"{rm} {what}", f"{rm}/{key}") for rm in RM_STAGES
      for what, key in (("held-out", "heldout_accuracy"), ("ceiling", "labeler_ceiling"))]))
  cols = 5
  rows = math.ceil(len(panels) / cols)
  fig = Figure(figsize=(3.6 * cols, 3.4 * rows))
  axes = fig.subplots(rows, cols).ravel()
  for ax in axes[len(panels):]:
    ax.set_axis_off()
  for ax, (title, bars) in zip(axes, panels):
    bars = [(label, summary[key]) for label, key in bars if key in summary]
    for i, (_, s) in enumerate(bars):
      err = None if math.isnan(s["ci95"]) else s["ci95"]
      ax.bar(i, s["mean"], yerr=err, capsize=4, color="C0", alpha=0.6)
      ax.plot([i] * len(s["values"]), list(s["values"].values()), "k.", markersize=4)
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], rotation=30, ha="right",
                  fontsize=7)
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def mean_curves(workdirs: Mapping[int, str]) -> dict[str, dict[str, tuple[list, list, list]]]:
  """{PPO stage: {curve key: (steps, mean, ci95)}} over the seeds that logged every step."""
  out: dict[str, dict[str, tuple[list, list, list]]] = {}
  for stage in CURVE_STAGES:
    runs = read_curves({seed: os.path.join(d, stage) for seed, d in workdirs.items()})
    for key in CURVE_KEYS:
      series = [dict(zip(*r[key])) for r in runs.values() if key in r]
      if not series:
        continue
      steps = sorted(set.intersection(*(set(s) for s in series)))
      stats = [mean_ci([s[step] for s in series]) for step in steps]
      out.setdefault(stage, {})[key] = (steps, [m for m, _ in stats], [c for _, c in stats])
  return out


def plot_curves(curves: Mapping[str, Mapping[str, tuple[list, list, list]]], path: str) -> None:
  """One panel per held-out curve: the mean over seeds per PPO stage, the 95% CI shaded."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  # Lazy: heavy.
  fig = Figure(figsize=(4.5 * len(CURVE_KEYS), 3.6))
  axes = fig.subplots(1, len(CURVE_KEYS))
  for ax, key in zip(axes, CURVE_KEYS):
    if not any(key in runs for runs in curves.values()):
      ax.text(0.5, 0.5, f"no {key!r} logged", ha="center", va="center", transform=ax.transAxes)
    for stage, runs in curves.items():
      if key not in runs:
        continue
      steps, mean, ci = (np.asarray(v, np.float64) for v in runs[key])
      ax.plot(steps, mean, marker="o", markersize=3, label=stage)
      if not np.isnan(ci).all():
        ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2)
    ax.set_xlabel("PPO iteration (0: the SFT policy)")
    ax.set_title(f"held-out {key.split('/', 1)[1]} (mean, 95% CI)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def write_report(workdirs: Mapping[int, str], out_dir: str,
                 missing: Sequence[int] = ()) -> dict[str, str]:
  """seeds.md, seeds.json, seeds.png and seeds_curves.png in `out_dir` from the finished
  seeds' workdirs ({seed: workdir}); returns {file kind: path}."""
  per_seed = {seed: seed_metrics(d) for seed, d in sorted(workdirs.items())}
  summary = summarize(per_seed)
  checks = {seed: targets(m) for seed, m in per_seed.items()}
  curves = mean_curves(workdirs)
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f) for k, f in (
      ("markdown", "seeds.md"), ("json", "seeds.json"), ("plot", "seeds.png"),
      ("curves", "seeds_curves.png"))}
  with open(paths["markdown"], "w") as f:
    f.write(markdown(summary, checks, missing))
  with open(paths["json"], "w") as f:
    json.dump({"summary": summary, "targets": checks, "per_seed": per_seed,
               "missing_seeds": list(missing), "curves": curves}, f, indent=2, default=float)
  plot_summary(summary, paths["plot"])
  plot_curves(curves, paths["curves"])
  return paths
