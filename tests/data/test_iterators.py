"""Grain iterators: determinism, per-epoch shuffling, host sharding, exact resume from state."""
import collections
import json

import grain
import numpy as np
import pytest
from etils import epath

from instructjax.data import (make_comparison_iterator, make_lm_iterator, make_prompt_iterator,
                              state_from_json, state_to_json)

ONE_SHARD = dict(shard_index=0, shard_count=1)
N = 23


def _sft(n=N):
  # Varied lengths so packing puts 1-3 documents in a row.
  return [{"prompt": f"q{i}" + "." * (i % 7), "response": f"a{i}" + "!" * (i % 5)}
          for i in range(n)]


def _docs(batch, tok):
  """The documents of a LM batch, as decoded strings, in row/segment order."""
  out = []
  for toks, seg in zip(batch["tokens"], batch["segment_ids"]):
    for s in range(1, seg.max(initial=0) + 1):
      out.append(tok.decode(toks[seg == s]))
  return out


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("pack", [False, True])
def test_same_seed_same_batches_other_seed_other_order(tok, pack):
  kw = dict(batch_size=4, seq_len=24, pack=pack, **ONE_SHARD)
  a = _take(make_lm_iterator(_sft(), tok, seed=3, **kw), 8)
  b = _take(make_lm_iterator(_sft(), tok, seed=3, **kw), 8)
  c = _take(make_lm_iterator(_sft(), tok, seed=4, **kw), 8)
  _assert_same(a, b)
  assert [_docs(x, tok) for x in a] != [_docs(x, tok) for x in c]


def test_each_epoch_is_a_fresh_permutation(tok):
  it = make_lm_iterator(_sft(), tok, batch_size=1, seq_len=24, seed=0, pack=False,
                        num_epochs=3, **ONE_SHARD)
  docs = [d for batch in it for d in _docs(batch, tok)]
  assert len(docs) == 3 * N
  epochs = [docs[i * N:(i + 1) * N] for i in range(3)]
  everything = sorted(r["prompt"] + r["response"] for r in _sft())
  for e in epochs:
    assert sorted(e) == everything  # Every example exactly once per epoch.
  assert epochs[0] != epochs[1] != epochs[2]  # Reshuffled each epoch.
  assert epochs[0] != sorted(epochs[0])


@pytest.mark.parametrize("pack", [False, True])
def test_hosts_see_disjoint_covering_shards(tok, pack):
  count, epochs = 3, 2
  per_host = []
  for index in range(count):
    it = make_lm_iterator(_sft(), tok, batch_size=2, seq_len=24, seed=1, pack=pack,
                          num_epochs=epochs, drop_remainder=False, shard_index=index,
                          shard_count=count)
    per_host.append([d for batch in it for d in _docs(batch, tok)])
  total = collections.Counter(d for docs in per_host for d in docs)
  # 2 epochs x 23 examples over 3 hosts: 15 each, one example of the stream's tail unused.
  assert [len(d) for d in per_host] == [N * epochs // count] * count
  assert sum(total.values()) == N * epochs - 1
  assert set(total) == {r["prompt"] + r["response"] for r in _sft()}
  assert max(total.values()) <= epochs


def test_default_shard_is_the_jax_process(tok):
  it = make_lm_iterator(_sft(), tok, batch_size=2, seq_len=24, seed=0, pack=False)
  assert (it.fingerprint["shard_index"], it.fingerprint["shard_count"]) == (0, 1)
  with pytest.raises(ValueError, match="both shard_index and shard_count"):
    make_lm_iterator(_sft(), tok, batch_size=2, seq_len=24, seed=0, pack=False, shard_index=0)


def _resume_check(make, total, cut):
  """Batches total of one run == cut batches, state -> JSON -> new iterator, the rest."""
  straight = _take(make(), total)
  first = make()
  head = _take(first, cut)
  saved = state_to_json(first.get_state())
  _take(first, 2)  # The old iterator moves on; the saved state must not.
  resumed = make()
  resumed.set_state(state_from_json(saved))
  _assert_same(head + _take(resumed, total - cut), straight)


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("cut", [1, 5, 11])
def test_resume_is_exact_lm(tok, pack, cut):
  # 23 examples, batches of 3 packed rows of 24 tokens: resumes land mid-epoch, across the
  # epoch boundary and inside a packer's batch.
  def make():
    return make_lm_iterator(_sft(), tok, batch_size=3, seq_len=24, seed=7, pack=pack,
                            packing_bins=5, **ONE_SHARD)
  _resume_check(make, total=16, cut=cut)


def test_resume_is_exact_pretrain_sharded(tok):
  texts = [{"text": "w" * (i % 11 + 1) + str(i)} for i in range(17)]
  def make():
    return make_lm_iterator(texts, tok, batch_size=2, seq_len=16, seed=2, pack=True,
                            mode="pretrain", shard_index=1, shard_count=2)
  _resume_check(make, total=12, cut=7)


def test_resume_is_exact_comparisons_and_prompts(tok):
  cmps = [{"prompt": f"p{i}", "responses": ["a", "bb", "c" * (i % 4 + 1)],
           "ranking": [i % 3, (i + 1) % 3, (i + 2) % 3]} for i in range(10)]
  _resume_check(lambda: make_comparison_iterator(cmps, tok, batch_size=3, seq_len=12, seed=5,
                                                 **ONE_SHARD), total=9, cut=4)
  prompts = [{"prompt": f"p{i}", "id": i} for i in range(10)]
  _resume_check(lambda: make_prompt_iterator(prompts, tok, batch_size=4, prompt_len=6, seed=5,
                                             **ONE_SHARD), total=9, cut=3)


def test_state_is_json_and_checked_against_the_pipeline(tok):
  it = make_lm_iterator(_sft(), tok, batch_size=3, seq_len=24, seed=7, pack=True, **ONE_SHARD)
  _take(it, 2)
  state = it.get_state()
  assert json.loads(json.dumps(state)) == state
  other = make_lm_iterator(_sft(), tok, batch_size=3, seq_len=24, seed=8, pack=True,
                           **ONE_SHARD)
  with pytest.raises(ValueError, match="different pipeline.*seed"):
    other.set_state(state)
  smaller = make_lm_iterator(_sft(20), tok, batch_size=3, seq_len=24, seed=7, pack=True,
                             **ONE_SHARD)
  with pytest.raises(ValueError, match="num_examples"):
    smaller.set_state(state)


def test_grain_orbax_checkpoint_handler_round_trip(tok, tmp_path):
  def make():
    return make_lm_iterator(_sft(), tok, batch_size=2, seq_len=24, seed=0, pack=True,
                            **ONE_SHARD)
  straight = _take(make(), 6)
  it = make()
  _take(it, 3)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), item=it)
  restored = handler.restore(epath.Path(tmp_path), item=make())
  _assert_same(straight[3:], _take(restored, 3))


@pytest.mark.parametrize("pack", [False, True])
def test_sft_with_mixed_pretraining_text(tok, pack):
  """mix_texts: each document appears once per epoch beside the demonstrations, every token
  of it in the loss; the demonstrations keep their prompt out of the loss."""
  texts = [{"text": f"web text {i}."} for i in range(5)]
  it = make_lm_iterator(_sft(), tok, batch_size=2, seq_len=24, seed=0, pack=pack,
                        num_epochs=1, drop_remainder=False, mix_texts=texts, **ONE_SHARD)
  eos = tok.decode([tok.eos_id])
  seen, docs = [], []
  for batch in it:
    for toks, seg, mask in zip(batch["tokens"], batch["segment_ids"], batch["loss_mask"]):
      for s in range(1, seg.max(initial=0) + 1):
        doc = tok.decode(toks[seg == s])
        seen.append(doc)
        if doc.startswith("web text"):
          # Every token of the document predicts the next, the last one EOS.
          assert mask[seg == s].sum() == (seg == s).sum() - 1, doc
          docs.append(doc)
        else:
          assert mask[seg == s].sum() < (seg == s).sum() - 1, doc  # The prompt is not.
  assert sorted(docs) == sorted(t["text"] + eos for t in texts)
  assert len(seen) == N + len(texts)
  assert it.fingerprint["mixed_texts"] == len(texts)
  with pytest.raises(ValueError, match="mode 'sft'"):
    make_lm_iterator(texts, tok, batch_size=2, seq_len=24, seed=0, pack=False, mode="pretrain",
                     mix_texts=texts, **ONE_SHARD)


def test_sft_without_a_mix_is_unchanged():
  """mix_texts=None (config.data.pretrain_docs = 0): the same batches and fingerprint as an
  iterator made without the argument."""
  from instructjax.tokenizer import CharTokenizer
  tok = CharTokenizer()
  kw = dict(batch_size=4, seq_len=24, seed=3, pack=True, **ONE_SHARD)
  a, b = make_lm_iterator(_sft(), tok, **kw), make_lm_iterator(_sft(), tok, mix_texts=None, **kw)
  assert a.fingerprint == b.fingerprint and "mixed_texts" not in a.fingerprint
  for x, y in zip(_take(a, 4), _take(b, 4)):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
