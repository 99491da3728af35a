"""Throughput, MFU, compile time and memory of every stage's compiled step on this machine.

  python experiments/benchmark.py --preset=tiny --mesh=data=-1 --rules=dp --batch=32 --seq=128 \
      --output=/tmp/bench
  python experiments/benchmark.py --preset=llama-1b --batch=8 --seq=2048 --decode_batch=1 \
      --only=lm_step,decode_b1 --output=/tmp/bench_gpu          # on a GPU/TPU

Measures, after warm-up (median of --reps runs):
  * the LM/SFT train step: tokens/s (per device) and MFU with the causal-attention model FLOP
    count B * (6 N_mm T + 6 L T^2 d_attn) (instructjax/benchmarking/flops.py);
  * the RM step (batch // 2 prompts x 2 responses);
  * rollout generation with the KV-cache sampler: prefill tokens/s and decode tokens/s, and on
    accelerators the share of the HBM roofline a decode step reaches (also at --decode_batch);
  * the PPO update (epochs x minibatches of policy + value steps) and the whole PPO(-ptx)
    iteration as the driver compiles it, split into sampling / recompute / update phases;
  * the compile time of each function, peak device memory (`memory_stats()`, n/a on CPU), XLA's
    memory analysis of each executable and the eval_shape plan of instructjax/memory.py;
  * checks: state donation, copies, host transfers and recompilation of the PPO iteration;
  * response log-probabilities from full logits vs chunked from hidden states (--logprob_vocab
    to try a large vocabulary).
Peak FLOP/s: a table of published peaks for GPUs/TPUs, a measured jnp.dot on CPUs.

Writes <output>/benchmark.json and <output>/benchmark.md, and prints the markdown.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
import jax

from instructjax.benchmarking import report, suite
from instructjax.benchmarking.hardware import device_peak
from instructjax.models import PRESET_NAMES, get_preset
from instructjax.config import ConfigError
from instructjax.parallel.sharding import (MESH_AXES, RULE_PRESETS, ShardingContext, get_rules,
                                  make_mesh)

_PRESET = flags.DEFINE_enum("preset", "tiny", PRESET_NAMES, "model preset")
_MESH = flags.DEFINE_string("mesh", "data=-1", "mesh axes as data=..,fsdp=..,tensor=.. "
                            "(one may be -1: the remaining devices; missing axes: 1)")
_RULES = flags.DEFINE_enum("rules", "dp", sorted(RULE_PRESETS), "sharding rules")
_BATCH = flags.DEFINE_integer("batch", 32, "LM/RM step batch (sequences)")
_SEQ = flags.DEFINE_integer("seq", 128, "LM/RM step sequence length")
_PROMPT = flags.DEFINE_integer("prompt_len", None, "rollout prompt width P (default seq // 2)")
_NEW = flags.DEFINE_integer("new_tokens", None, "rollout response tokens N (default seq - P)")
_PPO_BATCH = flags.DEFINE_integer("ppo_batch", None, "PPO rollout batch (default --batch)")
_MINIBATCH = flags.DEFINE_integer("minibatch", None, "PPO minibatch (default ppo_batch // 4)")
_MICRO = flags.DEFINE_integer("micro_batch", 0, "PPO rows per forward/backward pass (gradient "
                              "accumulation; 0: the minibatch)")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "PPO epochs per iteration")
_PTX = flags.DEFINE_float("ptx_coef", 0.2, "PPO-ptx coefficient (0: plain PPO)")
_PTX_BATCH = flags.DEFINE_integer("ptx_batch", None, "ptx rows per iteration (default "
                                  "ppo_batch // 2)")
_PHASES = flags.DEFINE_bool("ppo_phases", True, "also time the PPO phases (and the update) as "
                            "separately jitted functions")
_PTX_SEQ = flags.DEFINE_integer("ptx_seq", None, "ptx sequence length (default --seq)")
_LP_VOCAB = flags.DEFINE_integer("logprob_vocab", None, "vocabulary of the log-prob benchmark "
                                 "(default: the preset's; e.g. 32768 to see a large head)")
_LP_CHUNK = flags.DEFINE_integer("logprob_chunk", 32, "positions per chunk, log-probs from "
                                 "hidden states")
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", 1, "batch of the second decode benchmark")
_ONLY = flags.DEFINE_list("only", list(suite.BENCHMARKS), f"benchmarks to run: {suite.BENCHMARKS}")
_REPS = flags.DEFINE_integer("reps", 5, "timed repetitions (the median is reported)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed runs before timing")
_DTYPE = flags.DEFINE_string("dtype", None, "override the compute dtype")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", None, "override the parameter dtype")
_REMAT = flags.DEFINE_string("remat", None, "override the remat policy")
_ATTENTION = flags.DEFINE_string("attention", None, "override model.attention (auto, reference, "
                                 "blocked, splash, cudnn)")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "matrix size of the CPU peak measurement")
_OUTPUT = flags.DEFINE_string("output", None, "directory for benchmark.json / benchmark.md")


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'data=-1' -> (-1, 1, 1); 'data=2,fsdp=4' -> (2, 4, 1)."""
  shape = dict.fromkeys(MESH_AXES, 1)
  for part in filter(None, text.split(",")):
    key, _, value = part.partition("=")
    try:
      n = int(value)
    except ValueError:
      n = 0
    if key not in shape or (n < 1 and n != -1):
      raise ConfigError(f"--mesh: {part!r} is not <axis>=<positive int or -1> with axis in "
                        f"{MESH_AXES}")
    shape[key] = n
  return tuple(shape[a] for a in MESH_AXES)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  overrides = {k: v for k, v in dict(dtype=_DTYPE.value, param_dtype=_PARAM_DTYPE.value,
                                     remat=_REMAT.value, attention=_ATTENTION.value).items()
               if v is not None}
  cfg = get_preset(_PRESET.value, **overrides)
  seq = _SEQ.value
  prompt_len = _PROMPT.value or seq // 2
  new_tokens = _NEW.value or seq - prompt_len
  if prompt_len + new_tokens > cfg.max_seq_len:
    raise ConfigError(f"--prompt_len + --new_tokens = {prompt_len + new_tokens} exceeds the "
                      f"preset's max_seq_len {cfg.max_seq_len}")
  ppo_batch = _PPO_BATCH.value or _BATCH.value
  minibatch = _MINIBATCH.value or max(ppo_batch // 4, 1)
  parts = ppo_batch // (_MICRO.value or minibatch)  # ptx rows split over every micro-batch.
  ptx_batch = _PTX_BATCH.value or max(ppo_batch // 2 // parts, 1) * parts
  shape = suite.PPOShape(batch=ppo_batch, minibatch=minibatch, epochs=_EPOCHS.value,
                         prompt_len=prompt_len, new_tokens=new_tokens, ptx_coef=_PTX.value,
                         ptx_batch=ptx_batch, ptx_seq=_PTX_SEQ.value or seq,
                         micro_batch=_MICRO.value)
  mesh = make_mesh(*parse_mesh(_MESH.value))
  ctx = ShardingContext(mesh, get_rules(_RULES.value))
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; mesh "
        f"{dict(mesh.shape)}; measuring the device peak ...", flush=True)
  peak = device_peak(cfg.dtype, _MATMUL_N.value)
  setup = suite.Setup(cfg=cfg, ctx=ctx, peak=peak, reps=_REPS.value, warmup=_WARMUP.value)
  config = {"preset": _PRESET.value, "mesh": " ".join(f"{k}={v}" for k, v in mesh.shape.items()),
            "rules": _RULES.value, "argv": sys.argv[1:]}
  res = suite.run_all(setup, _BATCH.value, seq, shape, _DECODE_BATCH.value, only=_ONLY.value,
                      config=config, ppo_phases=_PHASES.value,
                      logprob_vocab=_LP_VOCAB.value, logprob_chunk=_LP_CHUNK.value,
                      log=lambda m: print(m, flush=True))
  md = report.benchmark_markdown(res)
  print(md)
  if _OUTPUT.value:
    report.write_json(os.path.join(_OUTPUT.value, "benchmark.json"), res)
    report.write_text(os.path.join(_OUTPUT.value, "benchmark.md"), md)
    print(f"wrote {_OUTPUT.value}/benchmark.json and benchmark.md")


if __name__ == "__main__":
  app.run(main)
