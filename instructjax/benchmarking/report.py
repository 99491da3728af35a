"""Markdown tables and JSON files of benchmark results."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

NA = "n/a"


def fmt(x: Any, digits: int = 3) -> str:
  """Numbers to short strings (n/a for None/nan); everything else via str."""
  if x is None:
    return NA
  if isinstance(x, bool):
    return "yes" if x else "no"
  if isinstance(x, (int, float)):
    if isinstance(x, float) and math.isnan(x):
      return NA
    if x == 0:
      return "0"
    ax = abs(x)
    if ax >= 1e9 or ax < 1e-3:
      return f"{x:.{digits - 1}e}"
    if ax >= 1e4:
      return f"{x:,.0f}"
    if isinstance(x, int):
      return str(x)
    return f"{x:.{max(digits - 1 - int(math.floor(math.log10(ax))), 0)}f}"
  return str(x)


def fmt_bytes(n: Optional[float]) -> str:
  if n is None:
    return NA
  for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{int(n)} B"


def fmt_flops(x: Optional[float]) -> str:
  """FLOP/s with an SI prefix (GFLOP/s, TFLOP/s)."""
  if x is None:
    return NA
  for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
    if abs(x) >= scale:
      return f"{x / scale:.3g} {unit}"
  return f"{x / 1e6:.3g} MFLOP/s"


def fmt_pct(x: Optional[float]) -> str:
  return NA if x is None else f"{100 * x:.1f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table; numeric cells right-aligned."""
  out = ["| " + " | ".join(header) + " |",
         "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
  for row in rows:
    out.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
  return "\n".join(out)


def write_json(path: str, data: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True, default=_default)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def _default(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  if hasattr(x, "item"):
    return x.item()
  return str(x)





# ------------------------------------------------------------------------ benchmark.py's table


def _median(entry: Optional[dict]) -> Optional[float]:
  return None if not entry else entry["time"]["median_s"]


def benchmark_markdown(res: dict) -> str:
  """The markdown report of `suite.run_all`'s result."""
  c, h, pk, b = res["config"], res["host"], res["peak"], res["benchmarks"]
  lines = [f"# Benchmark: preset `{c['preset']}`, mesh {c['mesh']}, rules {c['rules']}", "",
           f"- device: {h['num_devices']} x {h['device_kind']} ({h['platform']}), jax "
           f"{h['jax']}, {h['cpu_count']} CPUs; load average (1/5/15 min) at start "
           f"{h['load_average']}, at end {res.get('load_average_end', NA)}",
           f"- peak: {fmt_flops(pk['flops'])} per device ({pk['source']}); HBM bandwidth "
           f"{fmt_bytes(pk['hbm_bytes_per_s']) + '/s' if pk['hbm_bytes_per_s'] else NA}",
           f"- model: {c['model']['family']} d={c['model']['d_model']} L={c['model']['n_layers']} "
           f"H={c['model']['n_heads']}/{c['model']['n_kv_heads']} ff={c['model']['d_ff']} "
           f"V={c['model']['vocab_size']}, {c['num_params']:,} params, compute "
           f"{c['model']['dtype']}, params {c['model']['param_dtype']}, remat "
           f"{c['model']['remat']}",
           f"- timing: median of {c['reps']} runs after {c['warmup']} warm-up runs; model FLOPs "
           "= B * (6 N_mm T + 6 L T^2 d_attn) per train step (causal attention; "
           "instructjax/benchmarking/flops.py)", ""]
  rows = []
  for key in ("lm_step", "rm_step"):
    e = b.get(key)
    if e:
      rows.append([e["name"], e["shape"], _median(e), e["tokens_per_s"],
                   e["tokens_per_s_per_device"], fmt_flops(e["model_flops_per_s_per_device"]),
                   fmt_pct(e["mfu"])])
  for key in ("rollout", "decode_b1"):
    e = b.get(key)
    if e:
      pre, dec = e["prefill"], e["decode"]
      if key == "rollout":
        rows.append([f"{e['name']}: prefill (prompt tokens)", e["shape"], _median(pre), pre["tokens_per_s"],
                     pre["tokens_per_s_per_device"], NA, fmt_pct(pre["mfu"])])
      rows.append([f"{e['name']}: decode ({dec['steps']} steps, new tokens)", e["shape"], dec["seconds"],
                   dec["tokens_per_s"], dec["tokens_per_s_per_device"], NA, NA])

  ppo = b.get("ppo_iteration")
  if ppo and ppo.get("update"):
    e = ppo["update"]
    rows.append([e["name"], e["shape"], _median(e), e["tokens_per_s"],
                 e["tokens_per_s_per_device"], fmt_flops(e["model_flops_per_s_per_device"]),
                 fmt_pct(e["mfu"])])
  if ppo:
    rows.append([ppo["name"], ppo["shape"], _median(ppo), ppo["tokens_per_s"],
                 ppo["tokens_per_s_per_device"], fmt_flops(ppo["model_flops_per_s_per_device"]),
                 fmt_pct(ppo["mfu"])])
  lines += ["## Throughput", "",
            table(["step", "shape", "median s", "tokens/s", "tokens/s/device",
                   "model FLOP/s/device", "MFU"], rows), ""]

  dec_rows = []
  for key in ("rollout", "decode_b1"):
    e = b.get(key)
    if e:
      d = e["decode"]
      dec_rows.append([e["name"], e["shape"], 1e3 * d["step_s"], fmt_bytes(d["bytes_per_step"]),
                       fmt_bytes(d["bytes_per_s"]) + "/s",
                       fmt_pct(d["hbm_roofline_fraction"])])
  if dec_rows:
    lines += ["## Decode against the HBM roofline", "",
              "bytes/step = weights (compute dtype) + the whole KV cache, read once per step; "
              "the roofline share needs a known HBM bandwidth (accelerators only).", "",
              table(["sampler", "shape", "ms/step", "bytes/step", "achieved", "HBM roofline"],
                    dec_rows), ""]

  if ppo and ppo.get("phases"):
    total = ppo["phase_sum_s"]
    prow = [[name, v["time"]["median_s"], fmt_pct(v["time"]["median_s"] / total)]
            for name, v in ppo["phases"].items()]
    prow.append(["sum of phases", total, "100.0%"])
    prow.append(["fused iteration (one jit)", _median(ppo), fmt_pct(_median(ppo) / total)])
    lines += ["## PPO iteration by phase", "",
              "Each phase a separately jitted function of the same code: sampling = the KV-cache "
              "sampler, recompute = policy/reference log-probs + values + RM scores, update = "
              "rewards/GAE + epochs x minibatches of policy and value steps.", "",
              table(["phase", "median s", "share"], prow), ""]

  lp = b.get("logprobs")
  if lp:
    lrows = []
    for mode in ("forward", "forward_backward"):
      f, h = lp[f"full_logits/{mode}"], lp[f"from_hidden/{mode}"]
      lrows.append([mode.replace("_", " + "), _median(f), _median(h),
                    f"{_median(f) / _median(h):.2f}x", fmt_bytes(f["temp_bytes"]),
                    fmt_bytes(h["temp_bytes"])])
    lines += [f"## {lp['name']}: full logits vs chunked from hidden states", "",
              f"shape {lp['shape']}; max |difference| {lp['max_abs_diff']:.2e}", "",
              table(["pass", "full logits s", "from hidden s", "speed-up", "full: XLA temp",
                     "hidden: XLA temp"], lrows), ""]

  lines += ["## Compile time", "", table(["function", "compile s"],
                                         [[k, v] for k, v in res["compile_s"].items()]), ""]

  mrows = []
  for key, e in res["memory"].items():
    x = e.get("xla") or {}
    mrows.append([key, fmt_bytes(e.get("device_peak_bytes")), fmt_bytes(x.get("argument_bytes")),
                  fmt_bytes(x.get("output_bytes")), fmt_bytes(x.get("alias_bytes")),
                  fmt_bytes(x.get("temp_bytes")), fmt_bytes(e.get("plan_bytes"))])
  lines += ["## Memory", "",
            "device peak: `device.memory_stats()['peak_bytes_in_use']` after the step (process-"
            "wide, n/a on CPU); XLA: the compiled executable's own memory analysis; plan: the "
            "eval_shape estimate of instructjax/memory.py (LM step).", "",
            table(["step", "device peak", "XLA arguments", "XLA outputs", "XLA aliased",
                   "XLA temp", "plan"], mrows), ""]

  if res.get("checks"):
    lines += ["## Checks", ""] + [f"- {k}: {v}" for k, v in res["checks"].items()] + [""]
  return "\n".join(lines)

__all__ = ["NA", "benchmark_markdown", "fmt", "fmt_bytes", "fmt_flops", "fmt_pct", "table",
           "write_json", "write_text"]
