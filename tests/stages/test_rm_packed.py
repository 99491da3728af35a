"""Packed comparisons (one row per prompt: the prompt once, then its K responses, shared-prefix
attention) give the reward model the same scores, loss and gradients as K separate rows; the
iterator packs, cuts batches to bucketed widths, marks identical responses and refuses rows
that do not fit, naming the record."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instructjax.data import DataError, batching, make_comparison_iterator
from instructjax.models import DecoderLM, get_preset
from instructjax.models.transformer import attention_mask
from instructjax.stages.rm import make_rm_eval_step, make_rm_train_step, rm_scores
from instructjax.training.state import TrainState
from instructjax.tokenizer import CharTokenizer

from tests.stages.test_rm import init_params

K_MAX, SEQ, PACKED = 5, 16, 64
TX = optax.sgd(0.1)


def model_and_params(seed=0):
  model = DecoderLM(get_preset("test"), head="scalar")
  params = init_params(model, seed)
  params["score_kernel"] = jax.random.normal(jax.random.key(seed + 1),
                                             params["score_kernel"].shape)
  return model, params


def random_comparisons(rng, b=4):
  """[(prompt_len, [prompt + response_k + EOS])] with K in {0, 1, 3, K_MAX}, one repeat."""
  out = []
  for i in range(b):
    p = int(rng.integers(2, 6))
    prompt = list(rng.integers(3, 90, p))
    seqs = []
    for _ in range([K_MAX, 0, 1, 3][i % 4]):
      seqs.append(np.array(prompt + list(rng.integers(3, 90, int(rng.integers(1, 8)))) + [2],
                           np.int32))
    if len(seqs) >= 3:
      seqs[2] = seqs[0].copy()  # Identical responses must be recognised as such.
    out.append((p, seqs))
  return out


def both_layouts(cmps):
  unpacked = [batching.comparison_row(s, K_MAX, SEQ, 0, 0) for _, s in cmps]
  packed = [batching.packed_comparison_row(s, p, K_MAX, PACKED, 0, 0) for p, s in cmps]
  stack = lambda rows: {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  return stack(unpacked), stack(packed)


def test_shared_prefix_mask_sees_the_prompt_and_its_own_response_only():
  seg = jnp.array([[1, 1, 2, 2, 3, 3, 0]])
  mask = np.asarray(attention_mask(seg, seg, jnp.arange(7), shared_prefix=True))[0]
  want = np.zeros((7, 7), bool)
  for q, sq in enumerate(seg[0]):
    for k, sk in enumerate(seg[0]):
      want[q, k] = (k <= q and sk != 0 and sq != 0 and (sq == sk or sk == 1))
  np.testing.assert_array_equal(mask, want)
  plain = np.asarray(attention_mask(seg, seg, jnp.arange(7)))[0]
  assert not plain[4, 0] and mask[4, 0]  # Without the flag segments stay apart.


def test_packed_scores_loss_and_gradients_equal_the_unpacked_ones():
  model, params = model_and_params()
  unpacked, packed = both_layouts(random_comparisons(np.random.default_rng(0)))
  assert packed["tokens"].shape == (4, PACKED) and unpacked["tokens"].shape == (4, K_MAX, SEQ)
  mask = unpacked["k_mask"]
  np.testing.assert_array_equal(mask, packed["k_mask"])
  scores = jax.jit(rm_scores, static_argnums=0)
  a = np.asarray(scores(model, params, unpacked))[mask]
  b = np.asarray(scores(model, params, packed))[mask]
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)

  step = jax.jit(make_rm_train_step(model, TX))
  outs = []
  for batch in (unpacked, packed):
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=TX.init(params))
    outs.append(step(state, {k: batch[k] for k in ("tokens", "positions", "segment_ids",
                                                    "k_mask", "last_index")}, None))
  (s1, m1), (s2, m2) = outs
  # (Not accuracy: the two identical responses tie up to float rounding, either way round.)
  for key in ("loss", "margin", "grad_norm", "reward_mean"):
    np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=1e-5, err_msg=key)
  for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)

  evaluate = jax.jit(make_rm_eval_step(model))
  same_unpacked = np.asarray(evaluate(params, unpacked)["same"])
  same_packed = np.asarray(evaluate(params, packed)["same"])
  valid = mask[:, :, None] & mask[:, None, :]
  np.testing.assert_array_equal(same_packed[valid], same_unpacked[valid])
  assert same_packed[0, 0, 2] and not same_packed[0, 0, 1]


def test_packed_row_layout():
  seqs = [np.array([5, 6, 7, 8, 2]), np.array([5, 6, 9, 2])]
  row = batching.packed_comparison_row(seqs, 2, 3, 12, 0, 1)
  np.testing.assert_array_equal(row["tokens"], [5, 6, 7, 8, 2, 9, 2, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 2, 2, 2, 3, 3, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(row["positions"], [0, 1, 2, 3, 4, 2, 3, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(row["last_index"], [4, 6, 0])
  np.testing.assert_array_equal(row["k_mask"], [True, True, False])
  with pytest.raises(ValueError, match="more than the packed row length 6"):
    batching.packed_comparison_row(seqs, 2, 3, 6, 0, 1)


def write_comparisons(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_iterator_packs_buckets_and_names_a_row_that_does_not_fit(tmp_path):
  tok = CharTokenizer()
  rows = [{"prompt": "sort: 3 1\n", "responses": ["1 3", "3 1", "1 3", "sure! 1 3"],
           "ranking": [0, 3, 1, 2]},
          {"prompt": "upper: sun\n", "responses": ["SUN", "sun"], "ranking": [0, 1]}]
  path = tmp_path / "cmp.jsonl"
  write_comparisons(path, rows)
  it = make_comparison_iterator(str(path), tok, batch_size=2, seq_len=32, seed=0, num_epochs=1,
                                shuffle=False, packed_len=128, pack_bucket=16)
  batch = next(iter(it))
  # Row 0: 10 prompt + 4 + 4 + 4 + 10 response tokens = 32 columns, a multiple of 16.
  assert batch["tokens"].shape == (2, 32)
  ranked = ["1 3", "sure! 1 3", "3 1", "1 3"]  # Best first: responses 0, 3, 1, 2.
  assert [tok.decode(batch["tokens"][0][batch["segment_ids"][0] == k + 2].tolist())
          for k in range(4)] == [r + tok.decode([tok.eos_id]) for r in ranked]
  np.testing.assert_array_equal(batch["response_id"][0, :4], [0, 1, 2, 0])

  write_comparisons(path, rows + [{"prompt": "x" * 20 + "\n", "responses": ["y" * 10] * 9,
                                   "ranking": list(range(9))}])
  with pytest.raises(DataError, match=r"cmp.jsonl:3.*packed_len 64"):
    make_comparison_iterator(str(path), tok, batch_size=2, seq_len=32, seed=0, packed_len=64)
  skipping = make_comparison_iterator(str(path), tok, batch_size=2, seq_len=32, seed=0,
                                      packed_len=64, on_error="skip")
  assert skipping.report.num_skipped == 1 and skipping.report.num_kept == 2
