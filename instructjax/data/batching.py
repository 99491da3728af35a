"""Host-side numpy rows and batches in the model's batch contract.

LM / SFT / pretraining batch (from `lm_row`, or from packing, then `collate`):
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

from typing import Any, Callable, Sequence

import numpy as np

Row = dict[str, np.ndarray]


def lm_document(ids: np.ndarray, loss_start: int, pad_id: int) -> Row:
  """One document's unpadded arrays: tokens, targets, loss_mask, all [L]."""
  n = len(ids)
  targets = np.full((n,), pad_id, np.int32)
  targets[:-1] = ids[1:]
  loss_mask = np.zeros((n,), bool)
  loss_mask[loss_start:n - 1] = True  # The last position's target is outside the document.
  return {"tokens": np.asarray(ids, np.int32), "targets": targets, "loss_mask": loss_mask}


def lm_row(doc: Row, seq_len: int, pad_id: int) -> Row:
  """One document right-padded to a row of length T (the unpacked mode)."""
  n = len(doc["tokens"])
  row = empty_lm_row(seq_len, pad_id)
  row["tokens"][:n] = doc["tokens"]
  row["targets"][:n] = doc["targets"]
  row["loss_mask"][:n] = doc["loss_mask"]
  row["segment_ids"][:n] = 1
  row["positions"][:n] = np.arange(n, dtype=np.int32)
  return row


def empty_lm_row(seq_len: int, pad_id: int) -> Row:
  return {"tokens": np.full((seq_len,), pad_id, np.int32),
          "positions": np.zeros((seq_len,), np.int32),
          "segment_ids": np.zeros((seq_len,), np.int32),
          "targets": np.full((seq_len,), pad_id, np.int32),
          "loss_mask": np.zeros((seq_len,), bool)}


def from_grain_packed(row: dict[str, Any]) -> Row:
  """Renames grain's packing outputs (tokens_segment_ids, tokens_positions) to the contract."""
  return {"tokens": row["tokens"], "positions": row["tokens_positions"],
          "segment_ids": row["tokens_segment_ids"], "targets": row["targets"],
          "loss_mask": row["loss_mask"].astype(bool)}


def comparison_row(seqs: Sequence[np.ndarray], k_max: int, seq_len: int, pad_id: int,
                   group: int) -> Row:
  """One prompt's ranked sequences (best first) as [K_max, T] arrays plus k_mask/last_index."""
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
    k_mask[k] = True
    last_index[k] = n - 1
  return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids,
          "k_mask": k_mask, "last_index": last_index, "group": np.int32(group)}


def empty_comparison_row(k_max: int, seq_len: int, pad_id: int) -> Row:
  return comparison_row([], k_max, seq_len, pad_id, group=-1)


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
