"""experiments/benchmark.py at CI size, and the pieces it is made of (FLOP counts, peaks, tables).

The end-to-end test runs the script in a fresh process with 2 CPU devices (data=2 mesh) at the
`test` preset with a tiny batch; it takes well under a minute on an idle 2-core machine (almost
all of it compilation) and checks the JSON fields every consumer relies on.
"""
import json
import os
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from instructjax.benchmarking import flops, hardware, report, timing
from instructjax.models import get_preset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "benchmark.py")


# ------------------------------------------------------------------------------- FLOP counts


def test_train_flops_formula_by_hand():
  cfg = get_preset("test")  # d=32, L=2, H=4 (head_dim 8), KV=2, ff=64, V=96, llama.
  attn = 32 * 8 * (4 * 2 + 2 * 2)  # q, o: d*H*Dh each; k, v: d*KV*Dh each.
  mlp = 3 * 32 * 64
  n_mm = 2 * (attn + mlp) + 32 * 96  # Layers + LM head; the embedding gather is not a matmul.
  assert flops.matmul_params(cfg) == n_mm
  assert flops.matmul_params(cfg, "scalar") == n_mm - 32 * 96 + 32
  b, t = 3, 16
  want = b * (6 * n_mm * t + 6 * 2 * t * t * 32)  # Causal attention: 6 L T^2 d_attn.
  assert flops.train_flops(cfg, b, t) == pytest.approx(want)
  assert flops.forward_flops(cfg, b, t) == pytest.approx(want / 3)


def test_decode_bytes():
  cfg = get_preset("test")
  kv = 2 * 2 * 4 * 48 * 2 * 8 * 4  # 2 (k, v) * L * B * S * KV * Dh * float32.
  assert flops.kv_cache_bytes(cfg, 4, 48) == kv
  weights = (cfg.num_params(with_embeddings=False) + 32 * 96) * 4
  assert flops.decode_step_bytes(cfg, 4, 48) == weights + kv


def test_ppo_flops_add_up():
  cfg = get_preset("test")
  upd = flops.ppo_update_flops(cfg, cfg, 8, 20, epochs=2, ptx_rows=4, ptx_seq=16)
  want = 2 * (flops.train_flops(cfg, 8, 20) + flops.train_flops(cfg, 8, 20, "scalar")
              + flops.train_flops(cfg, 4, 16))
  assert upd == pytest.approx(want)
  score = flops.ppo_score_flops(cfg, cfg, cfg, 8, 20)
  assert score == pytest.approx(2 * flops.forward_flops(cfg, 8, 20)
                                + 2 * flops.forward_flops(cfg, 8, 20, "scalar"))


# ------------------------------------------------------------------------------- peaks, timing


@pytest.mark.parametrize("kind,name", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"), ("NVIDIA H200", "NVIDIA H200"),
    ("NVIDIA GH200 480GB", "NVIDIA GH200"), ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB"),
    ("NVIDIA A100-SXM4-40GB", "NVIDIA A100 40GB"), ("NVIDIA L4", "NVIDIA L4"),
    ("TPU v4", "TPU v4"), ("TPU v5 lite", "TPU v5e"), ("TPU v5p", "TPU v5p"),
    ("TPU v6 lite", "TPU v6e")])
def test_known_peaks(kind, name):
  peak = hardware.known_peak(kind)
  assert peak is not None and peak.name == name
  assert peak.bf16_flops >= peak.f32_flops > 0 and peak.hbm_bytes_per_s > 0


def test_unknown_device_and_cpu_peak_is_measured():
  assert hardware.known_peak("cpu") is None
  peak = hardware.device_peak("float32", matmul_n=128)
  assert peak.platform == "cpu" and peak.source.startswith("measured")
  assert peak.flops > 1e6 and peak.hbm_bytes_per_s is None


def test_timing_threads_state_and_takes_the_median():
  calls = []

  def step(state, x):
    calls.append(state)
    return state + x, jnp.zeros(())

  t, state = timing.time_stateful(step, jnp.zeros(()), (1.0,), reps=3, warmup=2)
  assert len(t.seconds) == 3 and t.warmup == 2 and t.min <= t.median <= t.max
  assert float(state) == 5.0 and len(calls) == 5


def test_report_formatting():
  assert report.fmt(None) == "n/a" and report.fmt(float("nan")) == "n/a"
  assert report.fmt(123456.7) == "123,457" and report.fmt(0.01234) == "0.0123"
  assert report.fmt_bytes(3 * 2 ** 20) == "3.00 MiB" and report.fmt_pct(0.456) == "45.6%"
  assert report.fmt_flops(2.5e12) == "2.5 TFLOP/s"
  md = report.table(["a", "b"], [["x", 1.5], ["y", None]])
  assert md.splitlines()[1] == "|---|---:|" and "| y | n/a |" in md


# ------------------------------------------------------------------------------- end to end


def test_benchmark_cli_at_ci_size(tmp_path):
  # Lowest backend optimisation: compiles ~2x faster; this test checks fields, not speed.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
             "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, SCRIPT, "--preset=test", "--mesh=data=-1", "--rules=dp", "--batch=4",
         "--seq=16", "--prompt_len=8", "--new_tokens=8", "--epochs=1", "--reps=1",
         "--warmup=1", "--matmul_n=256", "--decode_batch=2",
         "--only=lm_step,rm_step,rollout,ppo", f"--output={tmp_path}"]
  start = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  elapsed = time.perf_counter() - start
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((tmp_path / "benchmark.json").read_text())
  md = (tmp_path / "benchmark.md").read_text()

  assert res["host"]["num_devices"] == 2 and res["host"]["platform"] == "cpu"
  assert len(res["host"]["load_average"]) == 3
  assert res["peak"]["source"].startswith("measured") and res["peak"]["flops"] > 0
  assert res["peak"]["flops"] == max(res["peak"]["measurements"])  # Re-measured at the end.
  assert res["config"]["mesh"].startswith("data=2")
  b = res["benchmarks"]
  assert set(b) == {"lm_step", "rm_step", "rollout", "ppo_iteration"}
  for key in ("lm_step", "rm_step"):
    e = b[key]
    assert e["time"]["median_s"] > 0 and e["compile_s"] > 0
    assert e["tokens_per_s"] == pytest.approx(2 * e["tokens_per_s_per_device"])
    assert 0 < e["mfu"] < 1
  assert b["lm_step"]["donation"]["aliased_fraction"] == pytest.approx(1.0)
  assert b["lm_step"]["memory"]["plan_bytes"] > 0
  ro = b["rollout"]
  assert ro["prefill"]["tokens"] == 4 * 8 and ro["prefill"]["tokens_per_s"] > 0
  assert ro["decode"]["steps"] == 7 and ro["decode"]["tokens_per_s"] > 0  # EOS disabled.
  assert ro["decode"]["hbm_roofline_fraction"] is None  # No bandwidth figure for a CPU.
  assert ro["checks"]["host_transfers"] == [] and ro["checks"]["while_loop"]
  assert ro["checks"]["cache_copies"]["count"] == 0  # The cache is updated in place.
  it = b["ppo_iteration"]
  assert it["time"]["median_s"] > 0 and it["compile_s"] > 0 and it["episodes_per_s"] > 0
  assert set(it["phases"]) == {"sampling", "recompute", "update"}
  assert it["phase_sum_s"] == pytest.approx(sum(p["time"]["median_s"]
                                                for p in it["phases"].values()))
  assert it["update"]["tokens_per_s"] > 0
  assert it["checks"]["donation"]["aliased_fraction"] == pytest.approx(1.0)
  assert it["checks"]["host_transfers"] == []
  # Layout copies of single weights happen (a transposed weight for a gradient); what must
  # not is a copy of the state as a whole, which a failed donation would make.
  copied = it["checks"]["copies"]["state_shaped"]["total_bytes"]
  assert copied < 0.5 * it["checks"]["donation"]["donated_bytes"], it["checks"]["copies"]
  assert it["checks"]["compilations_after_new_prompts"] == 1
  for name in ("LM/SFT step", "RM step", "rollout: prefill", "rollout: decode",
               "PPO-ptx iteration", "PPO phase: update"):
    assert res["compile_s"][name] > 0
  for e in res["memory"].values():
    assert e["device_peak_bytes"] is None  # CPU: no memory_stats.
    assert e["xla"]["argument_bytes"] > 0
  for heading in ("## Throughput", "## PPO iteration by phase", "## Compile time", "## Memory",
                  "## Checks", "load average"):
    assert heading in md
  print(f"benchmark.py at CI size: {elapsed:.1f}s")
