"""Property tests: tokenization, masking and packing invariants of LM batches.

For random demonstrations / documents, lengths, batch sizes, packing on or off, BOS on or off:
  * segment ids: each row is documents 1, 2, ..., n as contiguous runs, then padding (0);
  * positions restart at 0 in every segment and count up; 0 on padding;
  * every loss_mask position's target is the next token of the same document;
  * SFT: the loss covers exactly the response tokens (and EOS) of each document;
  * the multiset of documents in the batches is exactly the multiset of (truncated) inputs:
    packing loses and duplicates nothing.
The expected sequences come from a small independent statement of the truncation policy.
"""
import collections

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from instructjax.data import make_lm_iterator
from instructjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
text = st.text(alphabet="abcxyz .", min_size=1, max_size=14).filter(lambda s: s.strip())


def _expected_sft(prompt, response, seq_len, bos):
  """(prompt ids incl. BOS, response ids incl. EOS if not cut) per the documented policy."""
  b = [TOK.bos_id] if bos else []
  p = TOK.encode(prompt)
  p = b + p[max(0, len(p) - (seq_len - 2 - len(b))):]  # Left cut to max_prompt_len.
  r = TOK.encode(response)
  room = seq_len - len(p)
  r = r + [TOK.eos_id] if len(r) + 1 <= room else r[:room]  # Right cut; no EOS if cut.
  return tuple(p), tuple(r)


def _expected_pretrain(doc, seq_len, bos):
  ids = ([TOK.bos_id] if bos else []) + TOK.encode(doc) + [TOK.eos_id]
  return [tuple(ids[i:i + seq_len]) for i in range(0, len(ids), seq_len)]


def _check_row(row, sft):
  """Checks one row's invariants; returns its documents as (tokens, loss-start) pairs."""
  tokens, seg, pos = row["tokens"], row["segment_ids"], row["positions"]
  targets, mask = row["targets"], row["loss_mask"]
  t_len = len(tokens)
  n = int(seg.max(initial=0))
  real = seg > 0
  # Real tokens first, then padding only.
  assert not np.any(real[1:] & ~real[:-1])
  # Segment ids are 1..n in order, each one contiguous run.
  runs = [int(s) for i, s in enumerate(seg[real]) if i == 0 or s != seg[real][i - 1]]
  assert runs == list(range(1, n + 1))
  assert not pos[~real].any() and (tokens[~real] == TOK.pad_id).all()
  assert not mask[~real].any() and (targets[~real] == TOK.pad_id).all()
  docs = []
  for s in range(1, n + 1):
    idx = np.nonzero(seg == s)[0]
    np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
    doc_mask = mask[idx]
    # Loss only where the target is the next token of this same document.
    for t in idx[doc_mask]:
      assert t + 1 < t_len and seg[t + 1] == s and targets[t] == tokens[t + 1]
    assert not doc_mask[-1]  # The last position's target is outside the document.
    on = np.nonzero(doc_mask)[0]
    if sft:
      # Exactly the targets from the first response token to the end of the document.
      assert len(on) >= 1
      np.testing.assert_array_equal(on, np.arange(on[0], len(idx) - 1))
    else:
      np.testing.assert_array_equal(on, np.arange(len(idx) - 1))
    docs.append((tuple(int(x) for x in tokens[idx]), int(on[0]) + 1 if len(on) else 0))
  return docs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(text, text), min_size=1, max_size=10),
       seq_len=st.integers(6, 40), batch_size=st.integers(1, 4), pack=st.booleans(),
       bos=st.booleans(), shuffle=st.booleans(), seed=st.integers(0, 2**31))
def test_sft_batches_keep_every_document_and_mask_only_responses(pairs, seq_len, batch_size,
                                                                 pack, bos, shuffle, seed):
  recs = [{"prompt": p, "response": r} for p, r in pairs]
  it = make_lm_iterator(recs, TOK, batch_size=batch_size, seq_len=seq_len, seed=seed, pack=pack,
                        add_bos=bos, shuffle=shuffle, num_epochs=1, drop_remainder=False,
                        shard_index=0, shard_count=1, log=False)
  got = collections.Counter()
  for batch in it:
    assert batch["tokens"].shape == (batch_size, seq_len)
    for b in range(batch_size):
      for ids, response_start in _check_row({k: v[b] for k, v in batch.items()}, sft=True):
        got[(ids[:response_start], ids[response_start:])] += 1
  want = collections.Counter(_expected_sft(p, r, seq_len, bos) for p, r in pairs)
  assert got == want


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(text, min_size=1, max_size=10), seq_len=st.integers(4, 24),
       batch_size=st.integers(1, 3), pack=st.booleans(), bos=st.booleans(),
       seed=st.integers(0, 2**31))
def test_pretrain_batches_keep_every_token(docs, seq_len, batch_size, pack, bos, seed):
  recs = [{"text": d} for d in docs]
  it = make_lm_iterator(recs, TOK, batch_size=batch_size, seq_len=seq_len, seed=seed, pack=pack,
                        mode="pretrain", add_bos=bos, num_epochs=1, drop_remainder=False,
                        shard_index=0, shard_count=1, log=False)
  got = collections.Counter()
  for batch in it:
    for b in range(batch_size):
      for ids, _ in _check_row({k: v[b] for k, v in batch.items()}, sft=False):
        got[ids] += 1
  want = collections.Counter(p for d in docs for p in _expected_pretrain(d, seq_len, bos))
  assert got == want
