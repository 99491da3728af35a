"""Writing evaluation results: results.md (a table), results.json, and PNG plots.

    write_results(results, "out/eval", curves={"ppo": "runs/x/ppo", "ppo_ptx": "runs/x/ppo_ptx"})

Files:
  results.md       one row per (model, prompt condition), the columns of `COLUMNS`
  results.json     the `evaluate_models` dict as is (settings, rows, samples)
  comparison.png   grouped bars: correctness, exact match, win rate per group, courtesy share,
                   hallucination rate, finished share; and one panel each for RM score, KL to SFT, held-out LM loss
  curves.png       (with `curves`) PPO training curves of score, KL and ptx loss against step
                   (train split of each workdir's metrics.jsonl) and, below, the held-out
                   evaluations (eval split: RM score, gold correctness, hallucination rate,
                   pretraining loss; step 0 is the SFT policy); a key no workdir logged gets an
                   empty panel that says so
Plots are drawn on matplotlib `Figure`s saved by its Agg canvas, never through pyplot, so no
display is needed and the caller's global backend is left alone (matplotlib is imported only
when a plot is drawn).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

from instructjax.evaluation.instructworld import row_label
from instructjax.training.metrics_writer import read_metrics
from instructjax.world import GROUPS

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
COMPARISON_PNG = "comparison.png"
CURVES_PNG = "curves.png"

# (row key, column title) of the markdown table, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("correctness", "correctness"),
    ("exact_match", "exact match"),
    *((f"win_rate_{g}", f"win vs SFT ({g})") for g in GROUPS),
    ("reward_score", "RM score"),
    ("kl_to_sft", "KL to SFT"),
    ("heldout_lm_loss", "held-out LM loss"),
    ("length_chars", "length (chars)"),
    ("courtesy_share", "`sure! ` share"),
    ("hallucination_rate", "hallucination rate"),
    ("finished_share", "finished"),
    ("num_prompts", "n"),
)
# Metrics in [0, 1], drawn side by side as grouped bars.
SHARE_METRICS: tuple[tuple[str, str], ...] = (
    ("correctness", "correctness"),
    ("exact_match", "exact match"),
    *((f"win_rate_{g}", f"win ({g})") for g in GROUPS),
    ("courtesy_share", "sure! share"),
    ("hallucination_rate", "hallucination"),
    ("finished_share", "finished"),
)
# Metrics on their own scales, one panel each.
SCALE_METRICS: tuple[tuple[str, str], ...] = (
    ("reward_score", "RM score"),
    ("kl_to_sft", "KL to SFT (nats/seq)"),
    ("heldout_lm_loss", "held-out LM loss"),
)
CURVE_KEYS: tuple[tuple[str, str], ...] = (
    ("score", "RM score"),
    ("kl", "KL to SFT"),
    ("ptx_loss", "ptx loss"),
)
# Held-out evaluations during PPO (split "eval"; step 0 is the SFT policy).
EVAL_CURVE_KEYS: tuple[tuple[str, str], ...] = (
    ("score", "held-out RM score"),
    ("correctness", "held-out gold correctness"),
    ("hallucination_rate", "held-out hallucination rate"),
    ("pretrain_heldout_loss", "held-out pretraining loss"),
)


def _fmt(value: Any) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if isinstance(value, bool) or isinstance(value, int):
    return str(int(value))
  if isinstance(value, float):
    return f"{value:.3f}"
  return str(value)


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The markdown table: one line per row, model label first."""
  head = ["model", "prompts"] + [title for _, title in COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    name = row["model"] + (f" (k={row['few_shot_shots']:.1f})" if row.get("few_shot") else "")
    cond = row.get("condition", "none")
    cells = [name, "bare" if cond == "none" else f"({cond})"]
    cells += [_fmt(row.get(key)) for key, _ in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def results_markdown(results: Mapping[str, Any]) -> str:
  """results.md: the table, the settings, and the metric definitions in one sentence each."""
  s = results.get("settings", {})
  parts = ["# InstructWorld evaluation", "", results_table(results["rows"]), ""]
  if s:
    parts += ["Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(s.items())), ""]
  parts += [
      "Win rate: per prompt 1 / 0.5 / 0 as the group's utility of the response is above / equal "
      "to / below that of the SFT response. KL: mean over prompts of log pi(y|x) - "
      "log pi_sft(y|x) on the model's own responses at temperature 1 (a KL estimate only for "
      "temperature-1 samples; on greedy responses the log-ratio of the chosen tokens). Length "
      "in characters. Hallucination rate: share of responses whose content (after one `sure! `) "
      "holds a whitespace-separated token that is neither one of the prompt's argument tokens "
      "nor the upper-case form of one (closed-domain hallucination). Few-shot rows show the "
      "mean number of exemplars used (k).", ""]
  return "\n".join(parts)


def _bar_values(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
  return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]


def plot_comparison(rows: Sequence[Mapping[str, Any]], path: str) -> None:
  """Grouped bars of the [0, 1] metrics (one bar per row) and one panel per scaled metric."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  # Lazy: heavy.
  labels = [row_label(r) for r in rows]
  fig = Figure(figsize=(max(10.0, 1.6 * len(SHARE_METRICS) + 0.3 * len(rows)), 8.0))
  grid = fig.add_gridspec(2, len(SCALE_METRICS))
  ax = fig.add_subplot(grid[0, :])
  width = 0.8 / max(len(rows), 1)
  for i, (row, label) in enumerate(zip(rows, labels)):
    xs = [m + (i - (len(rows) - 1) / 2) * width for m in range(len(SHARE_METRICS))]
    values = [row.get(key) for key, _ in SHARE_METRICS]
    ax.bar(xs, [0.0 if v is None else float(v) for v in values], width, label=label)
  ax.set_xticks(range(len(SHARE_METRICS)), [t for _, t in SHARE_METRICS])
  ax.set_ylim(0, 1.05)
  ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")  # A win rate of 0.5 = SFT.
  ax.legend(fontsize=8, ncol=min(len(rows), 4))
  ax.set_title("held-out InstructWorld prompts")
  for j, (key, title) in enumerate(SCALE_METRICS):
    sub = fig.add_subplot(grid[1, j])
    values = _bar_values(rows, key)
    if all(math.isnan(v) for v in values):
      sub.text(0.5, 0.5, "not computed", ha="center", va="center", transform=sub.transAxes)
    else:
      sub.bar(range(len(rows)), [0.0 if math.isnan(v) else v for v in values],
              color=[f"C{i}" for i in range(len(rows))])
      for i, v in enumerate(values):
        if math.isnan(v):  # Not computed for this row (e.g. no KL for the reference-less).
          sub.text(i, 0.0, "n/a", ha="center", va="bottom", fontsize=7)
    sub.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
    sub.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _points(records: Sequence[Mapping[str, Any]], key: str) -> Optional[tuple[list, list]]:
  by_step = {}  # The last record of a step wins (a resumed run may log a step again).
  for r in records:
    if r.get(key) is not None and r.get("step") is not None:
      by_step[int(r["step"])] = float(r[key])
  if not by_step:
    return None
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def read_curves(workdirs: Mapping[str, str]) -> dict[str, dict[str, tuple[list, list]]]:
  """{run name: {curve key: (steps, values)}} from each workdir's metrics: CURVE_KEYS from the
  train split, EVAL_CURVE_KEYS from the eval split as "eval/<key>".

  Records missing a key (or its step) are skipped, so partial logs still plot.
  """
  out = {}
  for name, workdir in workdirs.items():
    curves = {}
    for split, keys, prefix in (("train", CURVE_KEYS, ""), ("eval", EVAL_CURVE_KEYS, "eval/")):
      records = read_metrics(workdir, split=split)
      for key, _ in keys:
        pts = _points(records, key)
        if pts:
          curves[prefix + key] = pts
    out[name] = curves
  return out


def plot_curves(curves: Mapping[str, Mapping[str, tuple[list, list]]], path: str) -> None:
  """Top row: one panel per CURVE_KEYS entry (training); bottom row: one per EVAL_CURVE_KEYS
  entry (held-out evaluations); one line per run."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  # Lazy: heavy.
  cols = max(len(CURVE_KEYS), len(EVAL_CURVE_KEYS))
  fig = Figure(figsize=(4.5 * cols, 7.6))
  axes = fig.subplots(2, cols)
  panels = [(axes[0][i], key, f"{title} (training)") for i, (key, title) in enumerate(CURVE_KEYS)]
  panels += [(axes[1][i], "eval/" + key, title) for i, (key, title) in enumerate(EVAL_CURVE_KEYS)]
  used = {id(ax) for ax, _, _ in panels}
  for row in axes:
    for ax in row:
      if id(ax) not in used:
        ax.set_axis_off()
  for ax, key, title in panels:
    drawn = False
    for name, runs in curves.items():
      if key in runs:
        ax.plot(*runs[key], label=name, marker="o" if key.startswith("eval/") else None,
                markersize=3)
        drawn = True
    if drawn:
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, f"no {key!r} logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("PPO iteration")
    ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def write_results(results: Mapping[str, Any], out_dir: str,
                  curves: Optional[Mapping[str, str]] = None) -> dict[str, str]:
  """Writes results.md, results.json, comparison.png and (with `curves`, {run name: PPO
  workdir}) curves.png into `out_dir`; returns {file kind: path}."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {"markdown": os.path.join(out_dir, RESULTS_MD),
           "json": os.path.join(out_dir, RESULTS_JSON),
           "comparison": os.path.join(out_dir, COMPARISON_PNG)}
  with open(paths["markdown"], "w") as f:
    f.write(results_markdown(results))
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=2, sort_keys=True, default=float)
  plot_comparison(results["rows"], paths["comparison"])
  if curves:
    paths["curves"] = os.path.join(out_dir, CURVES_PNG)
    plot_curves(read_curves(curves), paths["curves"])
  return paths
