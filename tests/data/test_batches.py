"""The batch contract: dtypes, shapes, masks, ranking order, left padding, truncation policy."""
import numpy as np
import pytest

from instructjax.data import make_comparison_iterator, make_lm_iterator, make_prompt_iterator

ONE_SHARD = dict(shard_index=0, shard_count=1)


def _lm_batch(tok, recs, **kw):
  args = dict(batch_size=len(recs), seq_len=32, seed=0, pack=False, shuffle=False, **ONE_SHARD)
  args.update(kw)
  it = make_lm_iterator(recs, tok, **args)
  return next(it), it


def test_sft_unpacked_row(tok):
  batch, _ = _lm_batch(tok, [{"prompt": "ab", "response": "cd"}])
  assert {k: (v.dtype.name, v.shape) for k, v in batch.items()} == {
      "tokens": ("int32", (1, 32)), "positions": ("int32", (1, 32)),
      "segment_ids": ("int32", (1, 32)), "targets": ("int32", (1, 32)),
      "loss_mask": ("bool", (1, 32))}
  a, b, c, d = tok.encode("abcd")
  eos, pad = tok.eos_id, tok.pad_id
  np.testing.assert_array_equal(batch["tokens"][0, :6], [a, b, c, d, eos, pad])
  np.testing.assert_array_equal(batch["targets"][0, :6], [b, c, d, eos, pad, pad])
  # Targets c, d, EOS count (positions 1..3); predicting b from a is prompt: no loss.
  np.testing.assert_array_equal(batch["loss_mask"][0, :6], [0, 1, 1, 1, 0, 0])
  assert not batch["loss_mask"][0, 6:].any()
  np.testing.assert_array_equal(batch["segment_ids"][0, :6], [1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(batch["positions"][0, :6], [0, 1, 2, 3, 4, 0])


def test_bos_is_optional(tok):
  batch, _ = _lm_batch(tok, [{"prompt": "ab", "response": "cd"}], add_bos=True)
  assert batch["tokens"][0, 0] == tok.bos_id
  assert tok.decode(batch["tokens"][0]) == "abcd"
  assert tok.decode(batch["targets"][0][batch["loss_mask"][0]], skip_special=False) == "cd<eos>"


def test_pretrain_rows_and_split_documents(tok):
  batch, it = _lm_batch(tok, [{"text": "hello"}, {"text": "x" * 20}], mode="pretrain", seq_len=8,
                        batch_size=4)
  rows = [tok.decode(r, skip_special=False).replace("<pad>", "") for r in batch["tokens"]]
  # "x" * 20 + EOS is 21 tokens: three pieces of at most 8, nothing dropped.
  assert rows == ["hello<eos>", "x" * 8, "x" * 8, "xxxx<eos>"]
  assert it.report.split_documents == 1
  # Loss on every target inside the document, none at its last position.
  np.testing.assert_array_equal(batch["loss_mask"][0], [1, 1, 1, 1, 1, 0, 0, 0])
  assert batch["loss_mask"][1].sum() == 7


def test_truncation_policy_sft(tok):
  recs = [{"prompt": "abcdefghij", "response": "0123456789"}]
  batch, it = _lm_batch(tok, recs, seq_len=12, max_prompt_len=4)
  # Prompt cut from the left (keeps "ghij"), response from the right; no EOS after a cut.
  assert tok.decode(batch["tokens"][0], skip_special=False) == "ghij01234567"
  assert tok.decode(batch["targets"][0][batch["loss_mask"][0]]) == "01234567"
  assert (it.report.truncated_prompts, it.report.truncated_responses) == (1, 1)
  batch, it = _lm_batch(tok, [{"prompt": "abc", "response": "0123"}], seq_len=12,
                        max_prompt_len=4)
  assert (it.report.truncated_prompts, it.report.truncated_responses) == (0, 0)
  assert tok.decode(batch["tokens"][0], skip_special=False).startswith("abc0123<eos>")


def test_bad_length_config_is_rejected(tok):
  with pytest.raises(ValueError, match="max_prompt_len 31 must be in"):
    _lm_batch(tok, [{"prompt": "a", "response": "b"}], max_prompt_len=31)


CMPS = [
    {"prompt": "q", "responses": ["mid", "worst", "best"], "ranking": [2, 0, 1], "group": "g2"},
    {"prompt": "qq", "chosen": "yes", "rejected": "no"},
    {"prompt": "q3", "chosen": "a", "rejected": "b", "group": "g1"},
]


def test_comparison_batch(tok):
  it = make_comparison_iterator(CMPS, tok, batch_size=4, seq_len=10, seed=0, shuffle=False,
                                num_epochs=1, drop_remainder=False, **ONE_SHARD)
  batch = next(it)
  assert {k: (v.dtype.name, v.shape) for k, v in batch.items()} == {
      "tokens": ("int32", (4, 3, 10)), "positions": ("int32", (4, 3, 10)),
      "segment_ids": ("int32", (4, 3, 10)), "k_mask": ("bool", (4, 3)),
      "last_index": ("int32", (4, 3)), "group": ("int32", (4,))}
  text = [[tok.decode(s) for s in row] for row in batch["tokens"]]
  assert text[0] == ["qbest", "qmid", "qworst"]  # Best to worst by the ranking.
  assert text[1] == ["qqyes", "qqno", ""]
  np.testing.assert_array_equal(batch["k_mask"], [[1, 1, 1], [1, 1, 0], [1, 1, 0], [0, 0, 0]])
  np.testing.assert_array_equal(batch["last_index"][:2], [[5, 4, 6], [5, 4, 0]])
  # The reward is read at last_index: the EOS of each real sequence.
  for b, k in zip(*np.nonzero(batch["k_mask"])):
    assert batch["tokens"][b, k, batch["last_index"][b, k]] == tok.eos_id
    n = batch["last_index"][b, k] + 1
    assert batch["segment_ids"][b, k, :n].all() and not batch["segment_ids"][b, k, n:].any()
    # The prompt is segment 1, the response and EOS segment 2.
    prompt_len = len(tok.encode(CMPS[b]["prompt"]))
    np.testing.assert_array_equal(batch["segment_ids"][b, k, :n],
                                  [1] * prompt_len + [2] * (n - prompt_len))
    np.testing.assert_array_equal(batch["positions"][b, k, :n], np.arange(n))
  assert not batch["segment_ids"][1, 2].any() and not batch["segment_ids"][3].any()
  assert it.group_names == ["g1", "g2"]
  np.testing.assert_array_equal(batch["group"], [1, -1, 0, -1])


def test_comparison_truncation_keeps_eos(tok):
  recs = [{"prompt": "abcdefgh", "chosen": "0123456789", "rejected": "xy"}]
  it = make_comparison_iterator(recs, tok, batch_size=1, seq_len=8, seed=0, max_prompt_len=3,
                                **ONE_SHARD)
  batch = next(it)
  seqs = [tok.decode(s, skip_special=False).replace("<pad>", "") for s in batch["tokens"][0]]
  assert seqs == ["fgh0123<eos>", "fghxy<eos>"]
  assert (it.report.truncated_prompts, it.report.truncated_responses) == (1, 1)


def test_prompt_batch_left_padded_with_metadata(tok):
  recs = [{"prompt": "hello", "answer": "A"}, {"prompt": "hi", "answer": "B"},
          {"prompt": "abcdefghijk", "answer": "C"}]
  it = make_prompt_iterator(recs, tok, batch_size=2, prompt_len=6, shuffle=False, num_epochs=1,
                            drop_remainder=False, **ONE_SHARD)
  batches = list(it)
  assert len(batches) == 2
  b0, b1 = batches
  assert {k: (v.dtype.name, v.shape) for k, v in b0.items()} == {
      "tokens": ("int32", (2, 6)), "segment_ids": ("int32", (2, 6)),
      "positions": ("int32", (2, 6)), "example_id": ("int32", (2,))}
  np.testing.assert_array_equal(b0["segment_ids"], [[0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
  np.testing.assert_array_equal(b0["positions"], [[0, 0, 1, 2, 3, 4], [0, 0, 0, 0, 0, 1]])
  assert b0["tokens"][1, :4].tolist() == [tok.pad_id] * 4
  assert [tok.decode(t) for t in b0["tokens"]] == ["hello", "hi"]
  assert tok.decode(b1["tokens"][0]) == "fghijk"  # Cut from the left.
  assert it.report.truncated_prompts == 1
  np.testing.assert_array_equal(b1["example_id"], [2, -1])  # The last batch is padded.
  assert not b1["segment_ids"][1].any()
  answers = [it.records[i].metadata["answer"] for i in
             np.concatenate([b0["example_id"], b1["example_id"]]) if i >= 0]
  assert answers == ["A", "B", "C"]


def test_drop_remainder(tok):
  recs = [{"prompt": "p", "response": f"r{i}"} for i in range(5)]
  it = make_lm_iterator(recs, tok, batch_size=2, seq_len=8, seed=0, pack=False, num_epochs=1,
                        **ONE_SHARD)
  assert len(list(it)) == 2
  it = make_lm_iterator(recs, tok, batch_size=2, seq_len=8, seed=0, pack=False, num_epochs=1,
                        drop_remainder=False, **ONE_SHARD)
  batches = list(it)
  assert len(batches) == 3 and batches[-1]["tokens"].shape == (2, 8)
  assert not batches[-1]["segment_ids"][1].any() and not batches[-1]["loss_mask"][1].any()
