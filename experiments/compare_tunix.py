"""Side by side on this machine, in one run: our PPO iteration and SFT step against google-tunix's.

  pip install google-tunix          # not a dependency of instructjax; this script installs nothing
  python experiments/compare_tunix.py --output=/tmp/compare_tunix [--require_tunix]

Without tunix the script says so and exits 0 (1 with --require_tunix).

Setup (the same on both sides unless said otherwise):
  * model: our `tiny` preset (llama: d=128, 4 layers, 4 heads / 2 KV heads of 32, SwiGLU 384,
    vocab 74, untied head, float32) and tunix's own Qwen3 class (`tunix.models.qwen3`) at the
    same dimensions (rope theta 1e4, eps 1e-5, untied head). Qwen3 is llama plus an RMSNorm on
    each query/key head (2 x 32 extra weights per layer); tunix's Llama3 class cannot be used:
    tunix 0.1.x's critic/reward forward passes `segment_ids`, which Llama3.__call__ rejects.
  * PPO: 32 prompts per iteration (InstructWorld-alphabet strings, BOS + 19..39 characters,
    left padded to 40), 32 response tokens per prompt at temperature 1 with EOS disabled on
    both sides (an id outside the vocabulary), so every iteration samples exactly 32 x 32
    tokens; policy, frozen reference, value model and reward model all of that size (ours:
    scalar-head DecoderLMs; tunix: `create_critic_model` heads); k1 KL penalty in the reward,
    GAE (gamma 1, lambda 0.95), clip 0.2 / value clip 0.2, 2 epochs of minibatches of 8, one
    AdamW step (lr 1e-5) of the policy and one of the value model per minibatch: 8 + 8 optimizer
    steps per iteration on both sides. Ours without the ptx term (tunix has none): ptx_coef 0;
    --ptx_coef adds a PPO-ptx row for ours.
    Ours: the stage's jitted iteration (`stages.ppo.jit_iteration`, state donated,
    compiled with `xla_options.compiler_options()`: on CPU, YNNPACK runs the elementwise
    fusions). Setting XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=eltwise gives tunix's
    programs the same.
    Tunix: `PpoLearner` over an `RLCluster` (vanilla rollout, actor/rollout/reference/critic/
    reward on this one device, no offloading); one iteration = one `_run_global_step` (timed by
    a subclass; it samples and scores minibatch by minibatch, 4 x 8 prompts, then trains).
  * SFT: one train step on [32, 128] tokens, every position counted (ours: `make_lm_train_step`
    under `jit_step`, AdamW; tunix: `PeftTrainer` full fine-tuning with its default LM loss
    and AdamW, inputs [32, 128] so 127 predicted positions per row).
  * timing: both sides are built and warmed up (--warmup iterations/steps, compilation
    included) first, then timed in --rounds alternating rounds (ours, tunix, ours, ...) of
    --reps // --rounds each, so that a change of the machine's load hits both alike. PPO: the
    median over all timed iterations, each blocked on its result. SFT: per round, the mean
    step time of back-to-back steps (ours: dispatched without waiting, one block at the end;
    tunix: one `train()` call, which keeps <= 2 steps in flight and waits at the end); the
    median over rounds. "1st call": the warm-up's first iteration / the warm-up steps' total.
The load average is printed with every block: the CPU is shared, timings are noisy.
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from instructjax import config as config_lib
from instructjax.parallel import xla_options
from instructjax.benchmarking import report, suite
from instructjax.benchmarking.hardware import device_peak, host_info
from instructjax.models import get_preset
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import ShardingContext, get_rules, make_mesh
from instructjax.tokenizer import WORLD_ALPHABET, CharTokenizer

_OUTPUT = flags.DEFINE_string("output", None, "directory for compare_tunix.json / .md")
_REQUIRE = flags.DEFINE_bool("require_tunix", False, "exit 1 (not 0) when tunix is missing")
_REPS = flags.DEFINE_integer("reps", 5, "timed iterations/steps (median reported)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed iterations/steps first")
_BATCH = flags.DEFINE_integer("batch", 32, "PPO prompts per iteration and SFT batch")
_MINIBATCH = flags.DEFINE_integer("minibatch", 8, "PPO minibatch")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "PPO epochs per iteration")
_PROMPT = flags.DEFINE_integer("prompt_len", 40, "prompt width (tokens, BOS included)")
_NEW = flags.DEFINE_integer("new_tokens", 32, "response tokens per prompt")
_SEQ = flags.DEFINE_integer("seq", 128, "SFT sequence length")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "PPO: alternate ours/tunix in this many rounds of "
                               "reps // rounds iterations each")
_PTX = flags.DEFINE_float("ptx_coef", 0.2, "also time our PPO-ptx iteration with this "
                          "coefficient (0: skip)")
_ONLY = flags.DEFINE_list("only", ["ppo", "sft"], "comparisons to run: ppo, sft")

LR = 1e-5


def tunix_available() -> bool:
  return importlib.util.find_spec("tunix") is not None


def load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def prompt_strings(n: int, width: int, seed: int = 0) -> list[str]:
  """n strings of the tokenizer's alphabet, 19..width-1 characters (BOS makes <= width)."""
  rng = np.random.default_rng(seed)
  alphabet = np.array(list(WORLD_ALPHABET))
  lo = min(19, width - 1)
  return ["".join(rng.choice(alphabet, int(rng.integers(lo, width)))) for _ in range(n)]


def our_prompt_batch(tokenizer, prompts: list[str], width: int) -> dict[str, np.ndarray]:
  tokens = np.zeros((len(prompts), width), np.int32)
  seg = np.zeros((len(prompts), width), np.int32)
  for r, p in enumerate(prompts):
    ids = tokenizer.encode(p, add_bos=True)
    tokens[r, width - len(ids):] = ids
    seg[r, width - len(ids):] = 1
  positions = np.maximum(np.cumsum(seg, axis=-1) - 1, 0).astype(np.int32)
  return {"tokens": tokens, "segment_ids": seg, "positions": positions}


def median_dict(seconds: list[float]) -> dict:
  return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
          "reps": len(seconds), "all_s": [round(s, 5) for s in seconds]}


# ----------------------------------------------------------------------------------- ours


def ours_setup():
  cfg = get_preset("tiny")
  ctx = ShardingContext(make_mesh(-1, 1, 1), get_rules("dp"))
  peak = device_peak(cfg.dtype, 1024)
  return suite.Setup(cfg=cfg, ctx=ctx, peak=peak, reps=_REPS.value, warmup=_WARMUP.value)


def ours_ppo(setup: suite.Setup, prompts: list[str], ptx_coef: float):
  """A runner of the driver's compiled PPO iteration on these prompts: run(n) -> n seconds."""
  shape = suite.PPOShape(batch=_BATCH.value, minibatch=_MINIBATCH.value, epochs=_EPOCHS.value,
                         prompt_len=_PROMPT.value, new_tokens=_NEW.value, ptx_coef=ptx_coef,
                         ptx_batch=_BATCH.value // 2, ptx_seq=_SEQ.value)
  _, _, _, iteration, _, _, state, batch = suite.ppo_setup(setup, shape)
  batch["prompts"] = suite.place(setup, our_prompt_batch(CharTokenizer(), prompts,
                                                         _PROMPT.value))
  box = {"state": state, "i": 0, "metrics": None}

  def run(n: int) -> list[float]:
    times = []
    for _ in range(n):
      start = time.perf_counter()
      box["state"], box["metrics"] = iteration(box["state"], batch, jax.random.key(box["i"]))
      jax.block_until_ready((box["state"], box["metrics"]))
      times.append(time.perf_counter() - start)
      box["i"] += 1
    return times

  run.metrics = lambda: jax.device_get(box["metrics"])
  return run


def ours_sft(setup: suite.Setup):
  """A runner of our LM/SFT train step: run(n) -> seconds per step over n steps dispatched
  back to back (one block at the end), like tunix's loop."""
  from instructjax.models import DecoderLM  # pylint: disable=import-outside-toplevel
  from instructjax.stages.jit import jit_step  # pylint: disable=import-outside-toplevel
  from instructjax.stages.lm import make_lm_train_step  # pylint: disable=import-outside-toplevel
  from instructjax.training.state import create_train_state  # pylint: disable=import-outside-toplevel
  model = DecoderLM(setup.cfg, shard=setup.ctx)
  tx, schedule = make_optimizer(ml_collections.ConfigDict(config_lib.optim_config(lr=1e-3)),
                                1000)
  state, shardings = create_train_state(model, tx, setup.key(), setup.ctx)
  data = suite.place(setup, suite.lm_batch(setup.cfg.vocab_size, _BATCH.value, _SEQ.value))
  step = jit_step(make_lm_train_step(model, tx, schedule), setup.ctx, shardings, data)
  box = {"state": state}

  def run(n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
      box["state"], metrics = step(box["state"], data, jax.random.key(i))
    jax.block_until_ready((box["state"], metrics))
    return (time.perf_counter() - start) / n

  return run


# ----------------------------------------------------------------------------------- tunix


class TunixTokenizer:
  """Our character tokenizer behind the methods tunix's TokenizerAdapter asks for."""

  def __init__(self):
    self.tok = CharTokenizer()

  def encode(self, text, **kwargs):
    del kwargs
    return self.tok.encode(text)

  def decode(self, ids, **kwargs):
    del kwargs
    return self.tok.decode(ids)

  def bos_id(self):
    return self.tok.bos_id

  def eos_id(self):
    return self.tok.eos_id

  def pad_id(self):
    return self.tok.pad_id


def tunix_model_config():
  from tunix.models.qwen3 import model as qwen3  # pylint: disable=import-outside-toplevel
  c = get_preset("tiny")
  return qwen3, qwen3.ModelConfig(
      num_layers=c.n_layers, vocab_size=c.vocab_size, embed_dim=c.d_model, hidden_dim=c.d_ff,
      num_heads=c.n_heads, head_dim=c.resolved_head_dim, num_kv_heads=c.n_kv_heads,
      rope_theta=int(c.rope_theta), norm_eps=c.norm_eps, use_tied_embedding=False)


def tunix_ppo(prompts: list[str], total_iterations: int):
  """A runner of tunix's PPOLearner on these prompts: run(n) -> seconds of n iterations, each
  one `_run_global_step` (one `train()` call per run, the learner and its jits reused)."""
  # pylint: disable=import-outside-toplevel
  from flax import nnx
  from jax.interpreters import pxla
  import optax
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl import utils as rl_utils
  from tunix.rl.ppo import ppo_learner
  from tunix.rl.rollout import base_rollout

  qwen3, mcfg = tunix_model_config()
  actor = qwen3.Qwen3(mcfg, rngs=nnx.Rngs(0))
  reference = qwen3.Qwen3(mcfg, rngs=nnx.Rngs(0))
  critic = rl_utils.create_critic_model(actor)
  reward = rl_utils.create_critic_model(qwen3.Qwen3(mcfg, rngs=nnx.Rngs(2)))
  mesh = pxla.thread_resources.env.physical_mesh  # As tunix's own tests: one device.
  rollout_cfg = base_rollout.RolloutConfig(
      max_tokens_to_generate=_NEW.value, max_prompt_length=_PROMPT.value,
      kv_cache_size=_PROMPT.value + _NEW.value, temperature=1.0, top_p=1.0, top_k=None,
      eos_tokens=[mcfg.vocab_size])  # EOS disabled: every response is new_tokens long.
  steps_per_iteration = _EPOCHS.value * (_BATCH.value // _MINIBATCH.value)
  roles = rl_cluster_lib.Role
  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={r: mesh for r in (roles.ACTOR, roles.CRITIC, roles.REFERENCE,
                                      roles.ROLLOUT, roles.REWARD)},
      rollout_engine="vanilla", offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=optax.adamw(LR), critic_optimizer=optax.adamw(LR),
          eval_every_n_steps=10 ** 9, max_steps=steps_per_iteration * total_iterations,
          mini_batch_size=_MINIBATCH.value, train_micro_batch_size=_MINIBATCH.value,
          pbar_description=None),
      rollout_config=rollout_cfg)
  cluster = rl_cluster_lib.RLCluster(actor=actor, critic=critic, reference=reference,
                                     reward=reward, tokenizer=TunixTokenizer(),
                                     cluster_config=cluster_config)
  times = []

  class TimedPPOLearner(ppo_learner.PPOLearner):
    """One PPO iteration = one global step: rollouts of the whole batch and their updates."""

    def _run_global_step(self, *args, **kwargs):
      start = time.perf_counter()
      super()._run_global_step(*args, **kwargs)
      jax.block_until_ready((nnx.state(self.rl_cluster.actor_trainer.model),
                             nnx.state(self.rl_cluster.critic_trainer.model)))
      times.append(time.perf_counter() - start)

  learner = TimedPPOLearner(
      rl_cluster=cluster, ppo_config=ppo_learner.PPOConfig(
          num_iterations=_EPOCHS.value, beta=0.05, kl_method="kl", gamma=1.0, gae_lambda=0.95,
          epsilon=0.2, clip_range_value=0.2))
  def run(n: int) -> list[float]:
    done = len(times)
    learner.train([{"prompts": list(prompts)} for _ in range(n)])
    if len(times) - done != n:
      raise RuntimeError(f"tunix ran {len(times) - done} iterations, expected {n}")
    return times[done:]

  run.steps = lambda: (int(cluster.actor_trainer.train_steps),
                       int(cluster.critic_trainer.train_steps))
  return run


def tunix_sft():
  """A runner of tunix's PeftTrainer (full fine-tuning): run(n) -> seconds per step of one
  `train()` call over n batches (its loop keeps <= 2 steps in flight, waits for all at the
  end)."""
  # pylint: disable=import-outside-toplevel
  from flax import nnx
  import optax
  from tunix.sft import peft_trainer
  from tunix.sft import utils as sft_utils

  qwen3, mcfg = tunix_model_config()
  model = qwen3.Qwen3(mcfg, rngs=nnx.Rngs(0))
  trainer = peft_trainer.PeftTrainer(
      model, optax.adamw(1e-3),
      peft_trainer.TrainingConfig(eval_every_n_steps=10 ** 9, pbar_description=None))
  trainer.is_managed_externally = True  # Every train() call runs all its batches, no close().

  def model_input(x):
    mask = x.input_mask
    return {"input_tokens": x.input_tokens, "input_mask": mask,
            "positions": sft_utils.build_positions_from_mask(mask),
            "attention_mask": sft_utils.make_causal_attn_mask(mask)}

  trainer.with_gen_model_input_fn(model_input)
  rng = np.random.default_rng(0)
  batch = peft_trainer.TrainingInput(
      input_tokens=jnp.asarray(rng.integers(3, mcfg.vocab_size, (_BATCH.value, _SEQ.value)),
                               jnp.int32),
      input_mask=jnp.ones((_BATCH.value, _SEQ.value), bool))

  def run(n: int) -> float:
    before = trainer.train_steps
    start = time.perf_counter()
    trainer.train([batch] * n)
    elapsed = time.perf_counter() - start
    if trainer.train_steps - before != n:
      raise RuntimeError(f"tunix ran {trainer.train_steps - before} SFT steps, expected {n}")
    return elapsed / n

  return run


# ----------------------------------------------------------------------------------- main


def markdown(res: dict) -> str:
  h = res["host"]
  lines = ["# instructjax vs google-tunix on this machine", "",
           f"- {h['num_devices']} x {h['device_kind']} ({h['platform']}), {h['cpu_count']} "
           f"CPUs, jax {h['jax']}, tunix {res['tunix_version']}",
           "- setup: experiments/compare_tunix.py docstring (tiny llama-shaped model on both "
           "sides; PPO B=32, 40 + 32 tokens, 2 epochs x 4 minibatches of 8; SFT [32, 128])",
           "- ratio = tunix time / our time (> 1: ours faster); first: the first PPO iteration or "
           "the warm-up SFT steps, compilation included",
           f"- XLA: our steps' compiler options {res['xla']['our_compiler_options']}; "
           f"XLA_FLAGS (both sides) {res['xla']['XLA_FLAGS'] or 'unset'}", ""]
  rows = []
  for r in res["rows"]:
    rows.append([r["what"], r["ours_s"], r.get("tunix_s"), r.get("ratio"), r.get("ours_first_s"),
                 r.get("tunix_first_s"), str(r.get("load_average", ""))])
  lines.append(report.table(["measurement", "ours median s", "tunix median s",
                             "tunix / ours", "ours first s", "tunix first s",
                             "load avg during"], rows))
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not tunix_available():
    msg = ("google-tunix is not installed: nothing to compare. Install it into this environment "
           "(pip install google-tunix, or with --no-deps plus its light dependencies so that "
           "jax/flax stay as they are) and run again.")
    print(msg)
    sys.exit(1 if _REQUIRE.value else 0)
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  version = metadata.version("google-tunix")
  setup = ours_setup()
  prompts = prompt_strings(_BATCH.value, _PROMPT.value)
  res = {"host": host_info(), "tunix_version": version, "rows": [],
         "xla": {"our_compiler_options": xla_options.compiler_options(),
                 "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")},
         "config": {k: getattr(flags.FLAGS, k) for k in
                    ("batch", "minibatch", "epochs", "prompt_len", "new_tokens", "seq", "reps",
                     "warmup", "rounds", "ptx_coef")}}

  def row(what, ours, tunix=None):
    r = {"what": what, "ours_s": ours["time"]["median_s"], "ours": ours,
         "ours_first_s": ours.get("first_s", ours.get("compile_s")),
         "load_average": load_average()}
    if tunix is not None:
      r.update(tunix_s=tunix["time"]["median_s"], tunix=tunix, tunix_first_s=tunix["first_s"],
               ratio=tunix["time"]["median_s"] / ours["time"]["median_s"])
    res["rows"].append(r)
    print(json.dumps({k: v for k, v in r.items() if k not in ("ours", "tunix")}), flush=True)

  if "ppo" in _ONLY.value:
    # Both sides built and warmed up (compiled) first, then timed in alternating rounds so
    # that a change of the machine's load hits both alike.
    rounds, per_round = _ROUNDS.value, max(_REPS.value // _ROUNDS.value, 1)
    total = _WARMUP.value + rounds * per_round
    print(f"ours: PPO iteration, warm-up ... (load {load_average()})", flush=True)
    ours_run = ours_ppo(setup, prompts, 0.0)
    ours_first = ours_run(_WARMUP.value)
    print(f"tunix: PPO iteration, warm-up ... (load {load_average()})", flush=True)
    tunix_run = tunix_ppo(prompts, total)
    tunix_first = tunix_run(_WARMUP.value)
    ours_t, tunix_t, loads = [], [], []
    for r in range(rounds):
      loads.append(load_average())
      print(f"round {r + 1}/{rounds} (load {loads[-1]})", flush=True)
      ours_t += ours_run(per_round)
      tunix_t += tunix_run(per_round)
    actor_steps, critic_steps = tunix_run.steps()
    steps = _EPOCHS.value * (_BATCH.value // _MINIBATCH.value)
    if (actor_steps, critic_steps) != (steps * total, steps * total):
      raise RuntimeError(f"tunix made {actor_steps}/{critic_steps} actor/critic steps, expected "
                         f"{steps * total} each")
    m = ours_run.metrics()
    row("PPO iteration (32 prompts x 32 tokens, 8+8 optimizer steps)",
        {"first_s": ours_first[0], "time": median_dict(ours_t),
         "response_length": float(m["response_length"])},
        {"first_s": tunix_first[0], "time": median_dict(tunix_t),
         "actor_steps": actor_steps, "critic_steps": critic_steps, "loads": loads})
    if _PTX.value > 0:
      ptx_run = ours_ppo(setup, prompts, _PTX.value)
      first = ptx_run(_WARMUP.value)
      row(f"ours with ptx_coef={_PTX.value} (PPO-ptx, no tunix counterpart)",
          {"first_s": first[0], "time": median_dict(ptx_run(_REPS.value))})
  if "sft" in _ONLY.value:
    rounds, per_round = _ROUNDS.value, max(_REPS.value // _ROUNDS.value, 1)
    print(f"SFT: warm-up ... (load {load_average()})", flush=True)
    ours_run, tunix_run = ours_sft(setup), tunix_sft()
    ours_first, tunix_first = ours_run(_WARMUP.value), tunix_run(_WARMUP.value)
    ours_t, tunix_t = [], []
    for r in range(rounds):
      print(f"SFT round {r + 1}/{rounds} (load {load_average()})", flush=True)
      ours_t.append(ours_run(per_round))
      tunix_t.append(tunix_run(per_round))
    row(f"SFT step [{_BATCH.value}, {_SEQ.value}] (mean of {per_round} back-to-back steps, "
        f"median of {rounds} rounds)",
        {"first_s": ours_first * _WARMUP.value, "time": median_dict(ours_t)},
        {"first_s": tunix_first * _WARMUP.value, "time": median_dict(tunix_t)})
  res["load_average_end"] = load_average()
  md = markdown(res)
  print(md)
  if _OUTPUT.value:
    report.write_json(os.path.join(_OUTPUT.value, "compare_tunix.json"), res)
    report.write_text(os.path.join(_OUTPUT.value, "compare_tunix.md"), md)


if __name__ == "__main__":
  app.run(main)
