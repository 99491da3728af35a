"""One check of the long-sequence kernels on a GPU or TPU, in a few minutes:

  python experiments/accelerator_check.py --output=/tmp/accel          # on the accelerator
  python experiments/accelerator_check.py --smoke --output=/tmp/accel  # CPU, small shapes

1. kernels: on real shapes (llama-1b attention: 32 heads, 8 KV heads, head dim 64, T=2048,
   bf16), the attention `model.attention=auto` picks on this backend (cuDNN on GPU, splash on
   TPU) and the blocked kernel against the float32 reference: outputs and q/k/v gradients,
   for packed documents with left padding, and shared-prefix rows (the RM's);
2. the llama-1b LM/SFT train step at batch 8 x 2048: tokens/s and MFU
   (`benchmarking.suite.bench_lm_step`), XLA's temporary memory;
3. decode at batch 1 against the HBM roofline (`benchmarking.suite.bench_rollout`), and how
   many cache-shaped buffers a decode step makes (whole cache / one layer).

--smoke runs the same code on the "test" preset at small shapes (the kernels at T=200 in
float32, splash in Pallas interpret mode): what the test suite executes on CPU. Writes
<output>/accelerator_check.json and .md and prints the markdown.
"""
from __future__ import annotations

import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from instructjax.benchmarking import report, suite
from instructjax.benchmarking.hardware import device_peak
from instructjax.models import get_preset
from instructjax.models.attention import AttentionMask, reference_attention, select
from instructjax.models.attention.dispatch import attend

_SMOKE = flags.DEFINE_bool("smoke", False, "small shapes (CPU): the test suite's run")
_PRESET = flags.DEFINE_string("preset", "llama-1b", "model preset of the step and decode")
_BATCH = flags.DEFINE_integer("batch", 8, "LM/SFT step batch")
_SEQ = flags.DEFINE_integer("seq", 2048, "LM/SFT step and kernel check sequence length")
_PROMPT = flags.DEFINE_integer("prompt_len", 1024, "decode: prompt tokens")
_NEW = flags.DEFINE_integer("new_tokens", 128, "decode: generated tokens")
_REPS = flags.DEFINE_integer("reps", 5, "timed repetitions")
_OUTPUT = flags.DEFINE_string("output", None, "directory for accelerator_check.json / .md")

# bf16 inputs against a float32 reference on the same (rounded) inputs: bf16 probabilities
# and outputs are good to ~3 significant bits.
BF16_RTOL = 3e-2


def kernel_mask(kind: str, b: int, t: int) -> AttentionMask:
  """Packed documents with left padding, or a prompt with 4 responses (shared prefix)."""
  seg = np.zeros((b, t), np.int32)
  for r in range(b):
    start = r * t // (4 * b)  # Row r has start padding tokens on the left.
    if kind == "packed":
      cuts = np.linspace(start, t, 4).astype(int)
    else:
      cuts = np.linspace(start, t, 6).astype(int)  # Prompt (segment 1), then 4 responses.
    for i, (a, z) in enumerate(zip(cuts, cuts[1:])):
      seg[r, a:z] = i + 1
  return AttentionMask.for_sequence(jnp.asarray(seg), shared_prefix=kind == "shared_prefix")


def check_kernels(cfg, b: int, t: int, implementations=("auto", "blocked")) -> dict:
  """Each `model.attention` implementation against the float32 reference (module docstring);
  each is reported with the kernel it selects here when that is another."""
  h, hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
  keys = jax.random.split(jax.random.key(0), 4)
  dtype = cfg.jnp_dtype
  q = jax.random.normal(keys[0], (b, t, h, dh), jnp.float32).astype(dtype)
  k = jax.random.normal(keys[1], (b, t, hkv, dh), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (b, t, hkv, dh), jnp.float32).astype(dtype)
  w = jax.random.normal(keys[3], (b, t, h, dh), jnp.float32)
  out = {}
  for kind in ("packed", "shared_prefix"):
    mask = kernel_mask(kind, b, t)
    chosen = lambda impl: select(impl, t, t, dtype, dh, self_attention=True,
                                 shared_prefix=mask.shared_prefix)
    fns = {"reference": lambda q, k, v, m=mask: reference_attention(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), m.dense())}
    for impl in implementations:
      name = impl if chosen(impl) == impl else f"{impl} ({chosen(impl)})"
      fns[name] = lambda q, k, v, m=mask, impl=impl: attend(q, k, v, m, impl)
    results = {}
    for name, fn in fns.items():
      value_and_grad = jax.jit(jax.value_and_grad(
          lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v).astype(jnp.float32) * w), argnums=(0, 1, 2)))
      start = time.perf_counter()
      _, grads = jax.block_until_ready(value_and_grad(q, k, v))
      results[name] = (jax.jit(fn)(q, k, v), grads, time.perf_counter() - start)
    ref_out, ref_grads, _ = results.pop("reference")
    valid = np.asarray(mask.q_segments != 0)  # Padding rows: the reference's uniform average.
    for name, (o, grads, seconds) in results.items():
      errors = {"out": rel_error(o, ref_out, valid)}
      errors.update({f"d{x}": rel_error(g, r) for x, g, r in zip("qkv", grads, ref_grads)})
      out[f"{kind}: {name}"] = {"max_rel_error": errors, "ok": max(errors.values()) <= BF16_RTOL
                                if dtype != jnp.float32 else max(errors.values()) <= 1e-5,
                                "first_call_s": seconds}
  return out


def rel_error(a, b, rows=None) -> float:
  """max |a - b| / max |b| (over `rows` [B, T] of [B, T, ...] arrays when given)."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  if rows is not None:
    a, b = a[rows], b[rows]
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def markdown(res: dict) -> str:
  lines = [f"# accelerator check: {res['device']}", "",
           f"jax {res['jax']}, preset {res['preset']}, smoke={res['smoke']}, "
           f"{res['seconds']:.0f} s in all", "", "## Kernels against the float32 reference",
           "", "| mask: kernel | max rel. error (out, dq, dk, dv) | ok |", "|---|---|---|"]
  for name, r in res["kernels"].items():
    e = r["max_rel_error"]
    lines.append(f"| {name} | {e['out']:.1e}, {e['dq']:.1e}, {e['dk']:.1e}, {e['dv']:.1e} | "
                 f"{r['ok']} |")
  step, rollout = res["lm_step"], res["decode"]
  temp = (step["memory"]["xla"] or {}).get("temp_bytes")
  lines += ["", "## LM/SFT step", "",
            f"{step['shape']}: {step['time']['median_s'] * 1e3:.1f} ms, "
            f"{step['tokens_per_s']:,.0f} tokens/s, MFU {100 * step['mfu']:.1f}% "
            f"(peak {res['peak_tflops']:.3g} TFLOP/s), XLA temp "
            f"{'n/a' if temp is None else f'{temp / 2 ** 30:.2f} GiB'}",
            "", "## Decode, batch 1", ""]
  d = rollout["decode"]
  roof = d["hbm_roofline_fraction"]
  cb = rollout["checks"]["cache_buffers"]
  lines.append(f"{rollout['shape']}: {d['step_s'] * 1e3:.2f} ms a step, "
               f"{d['bytes_per_s'] / 1e9:.0f} GB/s, "
               f"{'n/a' if roof is None else f'{100 * roof:.0f}%'} of the HBM roofline; "
               f"cache-shaped buffers a step: {cb['whole']} whole, {cb['layer']} one layer")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start = time.perf_counter()
  smoke = _SMOKE.value
  preset = "test" if smoke else _PRESET.value
  batch, seq = (2, 200) if smoke else (_BATCH.value, _SEQ.value)
  prompt_len, new_tokens = (16, 8) if smoke else (_PROMPT.value, _NEW.value)
  cfg = get_preset(preset, max_seq_len=max(seq, prompt_len + new_tokens,
                                           get_preset(preset).max_seq_len))
  dev = jax.devices()[0]
  print(f"{dev.platform}: {dev.device_kind}; kernels ...", flush=True)
  # Smoke: float32, and splash in Pallas interpret mode (auto is the reference at T=200 on
  # CPU).
  kernels = (check_kernels(cfg.replace(dtype="float32"), 1, seq, ("blocked", "splash"))
             if smoke else check_kernels(cfg, 2, seq))
  peak = device_peak(cfg.dtype, 256 if smoke else 2048)
  setup = suite.Setup(cfg=cfg, ctx=None, peak=peak, reps=_REPS.value, warmup=1)
  print("LM/SFT step ...", flush=True)
  lm_step = suite.bench_lm_step(setup, batch, seq)
  print("decode ...", flush=True)
  decode = suite.bench_rollout(setup, 1, prompt_len, new_tokens, "decode batch 1")
  res = {"device": f"{dev.platform}: {dev.device_kind}", "jax": jax.__version__,
         "preset": preset, "smoke": smoke, "peak_tflops": peak.flops / 1e12,
         "kernels": kernels, "lm_step": lm_step, "decode": decode,
         "seconds": time.perf_counter() - start}
  md = markdown(res)
  print(md)
  if _OUTPUT.value:
    report.write_json(os.path.join(_OUTPUT.value, "accelerator_check.json"), res)
    report.write_text(os.path.join(_OUTPUT.value, "accelerator_check.md"), md)
    print(f"wrote {_OUTPUT.value}/accelerator_check.json and .md")
  if not all(r["ok"] for r in kernels.values()):
    raise SystemExit("a kernel disagrees with the reference (see the table)")


if __name__ == "__main__":
  app.run(main)
