"""Host-side numpy rows and batches in the model's batch contract.

LM / SFT / pretraining batch (`lm_document`s, packed or not, then `lm_batch`):
  tokens      int32 [B, T]  token ids, PAD after the last document of a row
  positions   int32 [B, T]  position within its own document, from 0; 0 on padding
  segment_ids int32 [B, T]  0 = padding, 1, 2, ... = which packed document of the row
  targets     int32 [B, T]  targets[t] = tokens[t + 1] inside a document; PAD at a document's
                            last position and on padding
  loss_mask   bool  [B, T]  True where targets[t] counts: SFT -> the target is a response
                            token or the response's EOS; pretraining -> every position whose
                            target lies in the same document
Comparison batch (reward model), K_max response slots per prompt, slot 0 = best:
  tokens      int32 [B, K_max, T]  prompt + response + EOS, right padded
  positions   int32 [B, K_max, T]  0..L-1 then 0 on padding
  segment_ids int32 [B, K_max, T]  1 on real tokens, 0 on padding (slots k >= K all 0)
  k_mask      bool  [B, K_max]     True for real responses
  last_index  int32 [B, K_max]     index of the last real token (the EOS); 0 for empty slots
  group       int32 [B]            group id (index into the iterator's group_names); -1 = none
Prompt batch (generation / PPO), P = max prompt length:
  tokens      int32 [B, P]  LEFT padded with PAD
  segment_ids int32 [B, P]  1 on real tokens, 0 on padding
  positions   int32 [B, P]  cumsum(segment_ids) - 1, clipped at 0
  example_id  int32 [B]     index into the iterator's records (-1 for a padding row)
Rows that only fill up a final partial batch (drop_remainder=False) are all padding.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np

Row = dict[str, np.ndarray]


def lm_document(ids: np.ndarray, loss_start: int) -> np.ndarray:
  """One document as int32 [L, 2]: column 0 the tokens, column 1 = 1 where the loss counts.

  Tokens and loss flags travel together as one feature, so packing handles a single array;
  targets are derived per batch by `lm_batch` (cheaper than packing them too).
  """
  n = len(ids)
  doc = np.zeros((n, 2), np.int32)
  doc[:, 0] = ids
  doc[loss_start:n - 1, 1] = 1  # The last position's target is outside the document.
  return doc


def from_grain_packed(row: dict[str, Any]) -> Row:
  """Renames grain's packing outputs (seq_segment_ids, seq_positions) to the contract's."""
  return {"seq": row["seq"], "segment_ids": row["seq_segment_ids"],
          "positions": row["seq_positions"]}


def lm_batch(rows: Sequence[Row], batch_size: int, seq_len: int, pad_id: int) -> Row:
  """Stacks rows into the LM batch, deriving targets and loss_mask.

  A row is either packed ({"seq": [T, 2], "segment_ids": [T], "positions": [T]}) or a single
  document ({"seq": [L, 2]}), which becomes one right-padded row (the unpacked mode). A short
  final batch is filled with all-padding rows.
  """
  rows = list(rows)
  if len(rows) > batch_size:
    raise ValueError(f"{len(rows)} rows for a batch of {batch_size}")
  seq = np.zeros((batch_size, seq_len, 2), np.int32)
  seq[..., 0] = pad_id
  segment_ids = np.zeros((batch_size, seq_len), np.int32)
  positions = np.zeros((batch_size, seq_len), np.int32)
  for b, row in enumerate(rows):
    if "segment_ids" in row:
      seq[b], segment_ids[b], positions[b] = row["seq"], row["segment_ids"], row["positions"]
    else:
      n = len(row["seq"])
      seq[b, :n], segment_ids[b, :n], positions[b, :n] = row["seq"], 1, np.arange(n)
  real = segment_ids > 0
  tokens = np.where(real, seq[..., 0], pad_id).astype(np.int32)
  # targets[t] = tokens[t + 1] while t + 1 is in the same document, else PAD.
  same_doc = real[:, :-1] & (segment_ids[:, 1:] == segment_ids[:, :-1])
  targets = np.full((batch_size, seq_len), pad_id, np.int32)
  targets[:, :-1] = np.where(same_doc, tokens[:, 1:], pad_id)
  loss_mask = np.zeros((batch_size, seq_len), bool)
  loss_mask[:, :-1] = same_doc & (seq[:, :-1, 1] == 1)
  return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids,
          "targets": targets, "loss_mask": loss_mask}


def comparison_row(seqs: Sequence[np.ndarray], k_max: int, seq_len: int, pad_id: int,
                   group: int, prompt_len: Union[int, Sequence[int]] = 0) -> Row:
  """One prompt's ranked sequences (best first) as [K_max, T] arrays plus k_mask/last_index.

  With `prompt_len` (one for all sequences, or one each), a sequence's first prompt_len
  tokens are segment 1 and its response segment 2: read with the model's `shared_prefix`
  attention that is the attention of one sequence, and it tells a reward model that scores
  the response's log-likelihood (ModelConfig.score_logprob) where the response starts.
  Without it (0), every real token is segment 1.
  """
  lens = [prompt_len] * len(seqs) if isinstance(prompt_len, (int, np.integer)) else prompt_len
  tokens = np.full((k_max, seq_len), pad_id, np.int32)
  positions = np.zeros((k_max, seq_len), np.int32)
  segment_ids = np.zeros((k_max, seq_len), np.int32)
  k_mask = np.zeros((k_max,), bool)
  last_index = np.zeros((k_max,), np.int32)
  for k, ids in enumerate(seqs):
    n = len(ids)
    tokens[k, :n] = ids
    positions[k, :n] = np.arange(n, dtype=np.int32)
    segment_ids[k, :n] = 1
    if lens[k]:
      segment_ids[k, min(lens[k], n):n] = 2
    k_mask[k] = True
    last_index[k] = n - 1
  return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids,
          "k_mask": k_mask, "last_index": last_index, "group": np.int32(group)}


def empty_comparison_row(k_max: int, seq_len: int, pad_id: int) -> Row:
  return comparison_row([], k_max, seq_len, pad_id, group=-1)


def packed_length(seqs: Sequence[np.ndarray], prompt_len: int) -> int:
  """Tokens of one prompt followed by all its responses (the prompt written once)."""
  return prompt_len + sum(len(s) - prompt_len for s in seqs)


def packed_comparison_row(seqs: Sequence[np.ndarray], prompt_len: int, k_max: int,
                          seq_len: int, pad_id: int, group: int) -> Row:
  """One prompt's ranked sequences packed in one row: the prompt once, then each response.

  `seqs` are prompt + response_k + EOS, all starting with the same `prompt_len` prompt tokens.
  Row layout [T]: segment 1 = the prompt (positions 0..P-1), segment k + 2 = response k
  (positions P, P + 1, ...: each response continues the prompt as in its own sequence); with
  the model's `shared_prefix` attention each response sees the prompt and itself only, so
  its score equals the unpacked row's. last_index [K_max]: column of response k's last token;
  response_id [K_max]: the slot of the first response with the same tokens (equal ids =
  identical responses).
  """
  n = packed_length(seqs, prompt_len) if seqs else 0
  if n > seq_len:
    raise ValueError(f"a prompt with its {len(seqs)} responses is {n} tokens, more than the "
                     f"packed row length {seq_len}")
  tokens = np.full((seq_len,), pad_id, np.int32)
  positions = np.zeros((seq_len,), np.int32)
  segment_ids = np.zeros((seq_len,), np.int32)
  k_mask = np.zeros((k_max,), bool)
  last_index = np.zeros((k_max,), np.int32)
  response_id = np.arange(k_max, dtype=np.int32)
  if seqs:
    tokens[:prompt_len] = seqs[0][:prompt_len]
    positions[:prompt_len] = np.arange(prompt_len, dtype=np.int32)
    segment_ids[:prompt_len] = 1
  col, first = prompt_len, {}
  for k, ids in enumerate(seqs):
    response = np.asarray(ids[prompt_len:], np.int32)
    m = len(response)
    tokens[col:col + m] = response
    positions[col:col + m] = prompt_len + np.arange(m, dtype=np.int32)
    segment_ids[col:col + m] = k + 2
    col += m
    k_mask[k] = True
    last_index[k] = col - 1
    response_id[k] = first.setdefault(response.tobytes(), k)
  return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids,
          "k_mask": k_mask, "last_index": last_index, "response_id": response_id,
          "group": np.int32(group)}


def empty_packed_comparison_row(k_max: int, seq_len: int, pad_id: int) -> Row:
  return packed_comparison_row([], 0, k_max, seq_len, pad_id, group=-1)


def trim_packed(batch: Row, bucket: int) -> Row:
  """Cuts a packed comparison batch's trailing all-padding columns, keeping a multiple of
  `bucket` columns (so only a few widths, each compiled once, ever reach the step)."""
  used = int(np.max(np.nonzero(batch["segment_ids"].any(axis=0))[0], initial=-1)) + 1
  t = batch["tokens"].shape[1]
  width = min(t, max(bucket, -(-used // bucket) * bucket))
  if width == t:
    return batch
  return {k: (v[:, :width] if k in ("tokens", "positions", "segment_ids") else v)
          for k, v in batch.items()}


def prompt_row(ids: np.ndarray, prompt_len: int, pad_id: int, example_id: int) -> Row:
  """A prompt LEFT padded to P, so every prompt ends at the same column and generation appends."""
  n = len(ids)
  tokens = np.full((prompt_len,), pad_id, np.int32)
  segment_ids = np.zeros((prompt_len,), np.int32)
  if n:
    tokens[prompt_len - n:] = ids
    segment_ids[prompt_len - n:] = 1
  positions = np.maximum(np.cumsum(segment_ids) - 1, 0).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions,
          "example_id": np.int32(example_id)}


def empty_prompt_row(prompt_len: int, pad_id: int) -> Row:
  return prompt_row(np.zeros((0,), np.int32), prompt_len, pad_id, example_id=-1)


def collate(rows: Sequence[Row], batch_size: int, empty_row: Callable[[], Row]) -> Row:
  """Stacks rows into a batch; a short final batch is filled with all-padding rows."""
  rows = list(rows)
  if len(rows) > batch_size:
    raise ValueError(f"{len(rows)} rows for a batch of {batch_size}")
  rows += [empty_row() for _ in range(batch_size - len(rows))]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
