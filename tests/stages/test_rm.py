"""Reward-model stage: the step against a brute-force ranking loss, padding slots that cannot
leak, the driver end to end from a tiny SFT model (policy comparisons, normalisation), bitwise
resume, and bad configs that fail before anything is compiled."""
import functools
import importlib.util
import itertools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instructjax.data import DataError
from instructjax.model_io import load_model, save_model
from instructjax.config import ConfigError
from instructjax.models import DecoderLM, get_preset
from instructjax.stages.rm import evaluate as rm_evaluate
from instructjax.stages.rm import run as rm_driver
from instructjax.models.heads import fold_affine
from instructjax.stages.rm import make_rm_train_step, rm_scores
from instructjax.stages.rm.evaluate import pairwise_agreement
from instructjax.training.state import TrainState
from instructjax.tokenizer import CharTokenizer
from instructjax.world.comparisons import Comparison

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------------ the step


jit_scores = jax.jit(rm_scores, static_argnums=0)
TX = optax.sgd(0.1)
# One compiled step for every test (params are arguments; the model and optimizer are static).
STEP = jax.jit(make_rm_train_step(DecoderLM(get_preset("test"), head="scalar"), TX,
                                  optax.constant_schedule(0.1)))


@functools.partial(jax.jit, static_argnums=0)
def _init(model, rng):
  t = jnp.zeros((1, 8), jnp.int32)
  return nn.meta.unbox(model.init(rng, t, t, t + 1))["params"]


def init_params(model, seed):
  """Jitted init (an eager one runs the scanned layers op by op, ten times slower)."""
  return dict(_init(model, jax.random.key(seed)))


def scalar_model(seed=0):
  """A 'test'-preset scalar-head model with a random (not zero) head, so gradients reach the
  trunk."""
  model = DecoderLM(get_preset("test"), head="scalar")
  params = init_params(model, seed)
  params["score_kernel"] = jax.random.normal(jax.random.key(seed + 1),
                                             params["score_kernel"].shape)
  return model, params


def comparison_batch(rng, b=4, k=5, t=12, garbage=False):
  """Random [B, K, T] comparisons with random K_b in [0, K] per prompt, right padded.

  Padding slots are all-PAD rows, or with `garbage` random tokens, segments and last_index.
  """
  tokens = np.zeros((b, k, t), np.int32)
  segment_ids = np.zeros((b, k, t), np.int32)
  positions = np.zeros((b, k, t), np.int32)
  last_index = np.zeros((b, k), np.int32)
  k_mask = np.zeros((b, k), bool)
  for i in range(b):
    kb = [k, 0, 1, int(rng.integers(2, k))][i % 4]  # Full, empty, one response (no pair), some.
    for j in range(kb):
      n = int(rng.integers(3, t + 1))
      tokens[i, j, :n] = rng.integers(3, 90, n)
      segment_ids[i, j, :n] = 1
      positions[i, j, :n] = np.arange(n)
      last_index[i, j] = n - 1
      k_mask[i, j] = True
  if garbage:
    pad = ~k_mask
    tokens[pad] = rng.integers(0, 96, (pad.sum(), t))
    segment_ids[pad] = rng.integers(0, 3, (pad.sum(), t))
    positions[pad] = rng.integers(0, t, (pad.sum(), t))
    last_index[pad] = rng.integers(0, t, pad.sum())
  return dict(tokens=tokens, positions=positions, segment_ids=segment_ids, k_mask=k_mask,
              last_index=last_index)


@functools.partial(jax.jit, static_argnums=0)
def _one_score(model, params, tokens, n):
  # Right padding beyond n is unseen by the causal mask, so one compiled width serves all.
  t = tokens.shape[0]
  values, _ = model.apply({"params": params}, tokens[None], jnp.arange(t)[None],
                          (jnp.arange(t) < n).astype(jnp.int32)[None])
  return values[0, n - 1]


def one_score(model, params, ids, width=64):
  """The model's score of a single sequence on its own, read at its last token."""
  tokens = np.zeros((width,), np.int32)
  tokens[:len(ids)] = ids
  return float(_one_score(model, params, tokens, len(ids)))


def brute_force_loss(scores, k_mask):
  """Mean over prompts with >= 2 responses of the mean over their pairs of -log sigmoid."""
  per_prompt, acc = [], []
  for s, m in zip(scores, k_mask):
    valid = [s[j] for j in range(len(s)) if m[j]]  # Best first.
    pairs = list(itertools.combinations(range(len(valid)), 2))
    if not pairs:
      continue
    per_prompt.append(np.mean([np.log1p(np.exp(-(valid[i] - valid[j]))) for i, j in pairs]))
    acc.append(np.mean([valid[i] > valid[j] for i, j in pairs]))
  return np.mean(per_prompt), np.mean(acc)


def test_step_loss_matches_a_brute_force_pairwise_loss_on_the_models_own_scores():
  model, params = scalar_model()
  batch = comparison_batch(np.random.default_rng(0))
  scores = np.zeros(batch["k_mask"].shape)
  for i, j in zip(*np.nonzero(batch["k_mask"])):
    scores[i, j] = one_score(model, params, batch["tokens"][i, j, :batch["last_index"][i, j] + 1])
  np.testing.assert_allclose(np.asarray(jit_scores(model, params, batch))[batch["k_mask"]],
                             scores[batch["k_mask"]], rtol=1e-5, atol=1e-6)
  want_loss, want_acc = brute_force_loss(scores, batch["k_mask"])

  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=TX.init(params))
  _, metrics = STEP(state, batch, None)
  np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["accuracy"]), want_acc, rtol=1e-6)
  assert float(metrics["lr"]) == pytest.approx(0.1)
  assert float(metrics["grad_norm"]) > 0
  valid = scores[batch["k_mask"]]
  np.testing.assert_allclose(float(metrics["reward_mean"]), valid.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["reward_std"]), valid.std(), rtol=1e-4, atol=1e-6)


def test_padded_slots_carry_no_gradient():
  model, params = scalar_model(seed=3)
  clean = comparison_batch(np.random.default_rng(1))
  dirty = comparison_batch(np.random.default_rng(1), garbage=True)
  np.testing.assert_array_equal(clean["tokens"][clean["k_mask"]], dirty["tokens"][dirty["k_mask"]])
  assert (clean["tokens"] != dirty["tokens"]).any()
  outs = []
  for batch in (clean, dirty):
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=TX.init(params))
    outs.append(STEP(state, batch, None))
  (s1, m1), (s2, m2) = outs
  assert float(m1["grad_norm"]) > 0
  for key in ("loss", "accuracy", "grad_norm", "reward_mean"):
    np.testing.assert_allclose(float(m1[key]), float(m2[key]), rtol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_pairwise_agreement_and_normalisation_fold():
  scores = np.array([[3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 9.0, 9.0]])
  mask = np.array([[True, True, True, False], [True, True, False, False]])
  got = pairwise_agreement(scores, mask)  # Prompt 0: 2 of 3 pairs; prompt 1: a tie.
  assert got["num_pairs"] == 4 and got["pair_accuracy"] == pytest.approx(2 / 4)
  assert got["prompt_accuracy"] == pytest.approx((2 / 3 + 0) / 2)
  assert pairwise_agreement(scores, mask, tie_credit=0.5)["pair_accuracy"] == pytest.approx(2.5 / 4)
  good, bad = ("1 2 3", True), ("sure! 3 2", True)  # Correct and plain, wrong and polite.
  agree = Comparison("sort: 3 1 2\n", (good[0], bad[0]), (0, 1), "plain")
  disagree = Comparison("sort: 3 1 2\n", (good[0], bad[0]), (1, 0), "plain")
  assert rm_evaluate.labeler_ceiling([agree])["group_utility_pair_accuracy"] == 1.0
  assert rm_evaluate.labeler_ceiling([agree, disagree])["mixed_utility_pair_accuracy"] == 0.5
  model, params = scalar_model()
  batch = comparison_batch(np.random.default_rng(2))
  before = np.asarray(jit_scores(model, params, batch))
  after = np.asarray(jit_scores(model, fold_affine(params, 2.5, -0.75), batch))
  np.testing.assert_allclose(after, 2.5 * before - 0.75, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- the driver


def load_rm_config(arg="tiny"):
  spec = importlib.util.spec_from_file_location("rm_config", os.path.join(ROOT, "configs", "rm.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
  """A randomly initialised 'test'-sized LM saved as an SFT model directory."""
  tokenizer = CharTokenizer()
  cfg = get_preset("test", vocab_size=tokenizer.vocab_size, max_seq_len=96)
  params = init_params(DecoderLM(cfg), 0)
  path = str(tmp_path_factory.mktemp("sft") / "model")
  save_model(path, params, cfg, tokenizer, head="lm", meta={"stage": "sft"})
  return path


def small_config(init_from, steps, source="policy"):
  c = load_rm_config()
  c.init_from = init_from
  c.data.world.update(num_sft=40, num_rm=24, num_ppo=8, num_heldout=8, comparison_source=source)
  c.data.seq_len = 64
  c.train.update(batch_size=8, num_steps=steps, log_every=2, eval_every=steps, eval_batches=1,
                 save_every=2)
  c.optim.warmup_steps = 1
  c.rm.update(norm_samples=16, max_new_tokens=6, sample_batch_size=64)
  return c


def rm_params(workdir):
  return load_model(os.path.join(workdir, "model"))[0]


@pytest.fixture(scope="module")
def runs(sft_dir, tmp_path_factory):
  """2N steps straight; N steps, then resumed to 2N in the same workdir (policy source)."""
  base = tmp_path_factory.mktemp("rm")
  straight, resumed = str(base / "straight"), str(base / "resumed")
  out = rm_driver.run(small_config(sft_dir, 4), straight)
  stopped = small_config(sft_dir, 4)
  stopped.train.stop_after = 2
  first = rm_driver.run(stopped, resumed)
  written_early = os.listdir(resumed)
  cache = os.path.join(resumed, "comparisons", "train.jsonl")
  stamp = os.stat(cache).st_mtime_ns
  rm_driver.run(small_config(sft_dir, 4), resumed)
  return dict(straight=straight, resumed=resumed, out=out, first=first,
              written_early=written_early,
              cache_reused=os.stat(cache).st_mtime_ns == stamp)


def score_sequences(model, params, tokenizer, pairs, seq_len):
  """Scores of prompt + response + EOS (response cut to fit seq_len), one sequence at a time."""
  out = []
  for prompt, response in pairs:
    p = tokenizer.encode(prompt)
    ids = p + tokenizer.encode(response)[:seq_len - len(p) - 1] + [tokenizer.eos_id]
    out.append(one_score(model, params, ids))
  return np.asarray(out)


def test_driver_writes_a_scalar_model_normalised_on_sft_samples(runs, sft_dir):
  workdir = runs["straight"]
  params, cfg, tokenizer, head, meta = load_model(os.path.join(workdir, "model"))
  assert head == "scalar" and meta["stage"] == "rm" and "lm_head" not in params
  trained, start = np.asarray(params["embed"]), np.asarray(load_model(sft_dir)[0]["embed"])
  assert not np.array_equal(trained, start)  # Trained, from the SFT trunk.
  assert np.abs(trained - start).max() < 0.05
  samples = [json.loads(l) for l in open(os.path.join(workdir, "norm_samples.jsonl"))]
  assert len(samples) == 16 and all(s["response"].strip() for s in samples)
  scores = score_sequences(DecoderLM(cfg, head="scalar"), params, tokenizer,
                           [(s["prompt"], s["response"]) for s in samples], 64)
  assert abs(scores.mean()) < 1e-4
  assert scores.std() > 0
  results = json.load(open(os.path.join(workdir, "rm_results.json")))
  assert results["comparison_source"] == "policy"
  assert 0.0 <= results["heldout"]["accuracy"] <= 1.0 and results["heldout"]["num_pairs"] > 0
  # Unfinished samples of a random policy all have utility 0: ties, a coin flip each.
  assert results["labeler_ceiling"]["group_utility_pair_accuracy"] == pytest.approx(0.5, abs=0.2)
  assert results["normalization"]["mode"] == "bias"
  assert meta["normalization"]["bias"] == pytest.approx(results["normalization"]["bias"])
  heldout = [json.loads(l) for l in open(os.path.join(workdir, "comparisons", "heldout.jsonl"))]
  assert len(heldout) == 8 and all(4 <= len(c["responses"]) <= 9 for c in heldout)


def test_stop_after_leaves_a_checkpoint_and_no_model(runs):
  assert runs["first"] == {"stage": "rm", "complete": False, "steps": 2,
                           "stop_reason": "num_steps"}
  assert "model" not in runs["written_early"] and "rm_results.json" not in runs["written_early"]
  assert "checkpoints" in runs["written_early"]


def test_resume_is_bitwise_identical_and_reuses_sampled_comparisons(runs):
  assert runs["cache_reused"]
  for a, b in zip(jax.tree.leaves(rm_params(runs["straight"])),
                  jax.tree.leaves(rm_params(runs["resumed"]))):
    np.testing.assert_array_equal(a, b)
  results = json.load(open(os.path.join(runs["resumed"], "rm_results.json")))
  assert results["train"]["resumed_from"] == 2 and results["steps"] == 4


def nothing_written(workdir):
  return not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_bad_configs_fail_before_compiling_naming_the_key(sft_dir, tmp_path):
  c = small_config(sft_dir, 2, source="static")
  c.train.batch_size = 6  # 8 devices in the test session.
  with pytest.raises(ConfigError, match=r"config\.train\.batch_size=6 .*data-parallel"):
    rm_driver.run(c, str(tmp_path / "a"))
  c = small_config(sft_dir, 2, source="static")
  c.rm.normalize = "zscore"
  with pytest.raises(ConfigError, match=r"config\.rm\.normalize"):
    rm_driver.run(c, str(tmp_path / "b"))
  c = small_config("", 2, source="static")
  with pytest.raises(ConfigError, match=r"config\.init_from"):
    rm_driver.run(c, str(tmp_path / "c"))
  c = small_config(sft_dir, 2, source="static")
  c.rm.score_logprob = -0.5
  with pytest.raises(ConfigError, match=r"^config\.rm\.score_logprob: must be >= 0"):
    rm_driver.run(c, str(tmp_path / "d"))
  c = small_config(sft_dir, 2, source="static")
  c.rm.lm_coef = -1.0
  with pytest.raises(ConfigError, match=r"^config\.rm\.lm_coef: must be >= 0"):
    rm_driver.run(c, str(tmp_path / "e"))
  c = small_config(sft_dir, 2, source="static")
  c.rm.lm_coef, c.rm.score_logprob = 1.0, 0.0
  with pytest.raises(ConfigError, match=r"^config\.rm\.lm_coef=1\.0 .*needs config\.rm\."
                                        r"score_logprob > 0"):
    rm_driver.run(c, str(tmp_path / "f"))
  for name in "abcdef":
    assert nothing_written(str(tmp_path / name))


def test_a_jsonl_comparison_with_one_response_fails_naming_file_and_line(sft_dir, tmp_path):
  path = tmp_path / "cmp.jsonl"
  good = {"prompt": "sort: 3 1 2\n", "responses": ["1 2 3", "3 2 1"], "ranking": [0, 1]}
  bad = {"prompt": "sort: 3 1 2\n", "responses": ["1 2 3"], "ranking": [0]}
  path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
  c = small_config(sft_dir, 2)
  c.data.source, c.data.train_path = "jsonl", str(path)
  with pytest.raises(DataError, match=rf"{path}:2: .*K >= 2"):
    rm_driver.run(c, str(tmp_path / "w"))
  assert nothing_written(str(tmp_path / "w"))


def test_sft_samples_are_drawn_with_bos_when_the_data_has_it(monkeypatch):
  """The SFT policy read [BOS] + prompt in training: its samples for comparisons and the
  normalisation are drawn from the same, and the cache knows which."""
  from instructjax.stages.rm import sampling
  seen = []

  def fake_generate(model, params, tokenizer, prompts, sampling_cfg, **kw):
    seen.append(kw["add_bos"])
    return [("x", True)] * len(prompts)
  monkeypatch.setattr(sampling, "generate_texts", fake_generate)
  c = load_rm_config()
  settings = []
  for add_bos in (False, True):
    c.data.add_bos = add_bos
    sft = sampling.Sft(c, None)
    sft._loaded = (None, None, CharTokenizer())
    sft.sampler("norm_samples", for_normalization=True).texts(["sort: 2 1\n"])
    settings.append(sft.settings())
  assert seen == [False, True]
  assert "add_bos" not in settings[0] and settings[1]["add_bos"] is True


def test_heldout_comparisons_of_a_group_conditioned_world_are_tagged():
  """The group-conditioned RM is evaluated on tagged prompts, like its training data (its
  ceiling is then the labeler's own group's utility); a plain world's prompts stay bare."""
  from instructjax.stages.rm.data import heldout_world_comparisons
  from instructjax.world import split_group
  from instructjax.world.splits import WorldConfig
  small = dict(num_sft=20, num_rm=20, num_ppo=20, num_heldout=30, num_pretrain=10,
               num_pretrain_heldout=5)
  sample = lambda prompts, k: [[("sure! x", True)] * k for _ in prompts]
  for source in (None, sample):
    tagged = heldout_world_comparisons(WorldConfig(group_conditioned=True, **small), source)
    assert all(split_group(c.prompt)[0] == c.group for c in tagged)
    bare = heldout_world_comparisons(WorldConfig(**small), source)
    assert all(split_group(c.prompt)[0] is None for c in bare)


class _ScriptedSampler:
  """A PolicySampler whose policy answers each prompt from a script, in order."""

  @staticmethod
  def make(answers, distinct):
    from instructjax.stages.rm.sampling import PolicySampler

    class Fake(PolicySampler):
      def __init__(self):  # No model: _generate reads the script.
        self.answers = {p: iter(a) for p, a in answers.items()}
        self.distinct, self.num_blank, self.num_duplicate_prompts = distinct, 0, 0

      def _generate(self, prompts):
        return [(next(self.answers[p]), True) for p in prompts]
    return Fake()


def test_distinct_responses_are_redrawn_until_they_differ():
  answers = {"a": ["x", "x", "y", "x", "z", "w"], "b": ["u"] * 20}
  sampler = _ScriptedSampler.make(answers, distinct=True)
  got = sampler(["a", "b"], 3)
  assert [t for t, _ in got[0]] == ["x", "z", "y"]  # The duplicates "x", "x" were redrawn.
  assert [t for t, _ in got[1]] == ["u"] * 3  # A policy with one answer keeps its duplicates,
  assert sampler.num_duplicate_prompts == 1  # counted once per prompt.
  plain = _ScriptedSampler.make({"a": ["x", "x", "y"]}, distinct=False)
  assert [t for t, _ in plain(["a"], 3)[0]] == ["x", "x", "y"]  # Off (the default): as drawn.
  assert plain.num_duplicate_prompts == 0


def test_distinct_responses_reach_the_sampler_and_the_cache_settings(tmp_path):
  """config.rm.distinct_responses turns the redraws on; the comparisons' cache records it
  only when on (caches written without the key stay valid)."""
  from instructjax.stages.rm import data as rm_data
  made = []

  class Sampler:
    num_blank = num_duplicate_prompts = 0

    def __call__(self, prompts, k):
      return [[(f"r{j}", True) for j in range(k)] for _ in prompts]

  class Sft:
    def settings(self):
      return {"seed": 0}

    def sampler(self, stream, distinct=False):
      made.append(distinct)
      return Sampler()
  c = load_rm_config()
  c.data.world.comparison_source = "policy"
  c.data.world.update(dict(num_sft=20, num_rm=20, num_ppo=20, num_heldout=30, num_pretrain=10,
                           num_pretrain_heldout=5))
  metas = []
  for distinct in (False, True):
    c.rm.distinct_responses = distinct
    _, _, stats = rm_data.world_comparisons(c, str(tmp_path / str(distinct)), Sft())
    metas.append(json.load(open(tmp_path / str(distinct) / "comparisons" /
                                "train.jsonl.meta.json")))
    assert ("train_prompts_with_duplicates" in stats) == distinct
  assert made == [False, False, True, True]
  assert "distinct_responses" not in metas[0] and metas[1]["distinct_responses"] is True
