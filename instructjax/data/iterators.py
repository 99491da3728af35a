"""Grain pipelines: deterministic, host-sharded, per-epoch shuffled, batched, checkpointable.

Every factory does the same thing on every host:
  1. load + validate all records (loading.py) and tokenize them (encode.py), eagerly, on the
     host: every error or skip surfaces here, before anything is jitted, and the DataReport
     (skips by reason, truncations) is logged once and kept as `iterator.report`;
  2. build a grain pipeline over the encoded examples:
       MapDataset.source(examples) -> shuffle(seed) -> repeat(num_epochs)
         -> [shard_index::shard_count] -> map(numpy row) -> to_iter_dataset
         -> [first-fit packing] -> batch(batch_size)
     The shuffle is global (same seed on every host) and re-drawn every epoch (grain folds the
     epoch into the seed), and each host takes a disjoint stride of that global stream, so
     hosts never see the same example in an epoch and no example is dropped to balance them.
     With a finite `num_epochs` every host's stream is cut to floor(N * epochs / count)
     examples, so all hosts yield the same number of unpacked batches (packing may still differ
     by a batch: use num_epochs=None and a step count for multi-host packed training).
     Batches may straddle epochs.
  3. wrap the grain iterator in a `BatchIterator` whose `get_state()` is a JSON-serialisable
     dict (ints and strings); `set_state()` of that dict on a freshly built iterator (same
     data and arguments) resumes with exactly the batches an uninterrupted run would have
     seen. `state_to_json` / `state_from_json` serialise it; the iterator also works with
     `grain.checkpoint.CheckpointSave/CheckpointRestore` under orbax since it has
     get_state/set_state.

Packing (pack=True): grain's FirstFitPackIterDataset with `packing_bins` bins (default
batch_size): documents, in stream order, go to the first bin with room; when a document fits
in no bin, all bins are emitted as rows (in bin order) and a new set is started with it.
Each bin holds whole documents; segment_ids number them 1, 2, ... and positions restart at 0
for each, so attention masked by segment_ids equality never crosses documents.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, Sequence

import grain
import numpy as np

from instructjax.data import batching
from instructjax.data.adapters import Adapter
from instructjax.data.encode import (EncodeConfig, encode_comparison, encode_lm_records,
                                     encode_prompt)
from instructjax.data.errors import DataReport, OnError, guarded, log_report
from instructjax.data.loading import load_records
from instructjax.data.sources import Source

STATE_VERSION = 1


def resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """(index, count) given, or jax.process_index()/process_count() when both are None."""
  if shard_index is None and shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # Only needed for the default.
    return jax.process_index(), jax.process_count()
  if shard_index is None or shard_count is None:
    raise ValueError("give both shard_index and shard_count, or neither")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  return shard_index, shard_count


def index_dataset(examples: Sequence[Any], *, seed: int, shuffle: bool, num_epochs: int | None,
                  shard_index: int, shard_count: int) -> grain.MapDataset:
  """The shuffled, repeated, host-sharded stream of examples (before any transform)."""
  if not examples:
    raise ValueError("no examples to iterate over")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
  ds = grain.MapDataset.source(examples)
  if shuffle:
    ds = ds.shuffle(seed=seed % 2**32)
  ds = ds.repeat(num_epochs)
  ds = ds[shard_index::shard_count]
  if num_epochs is not None:
    ds = ds[:len(examples) * num_epochs // shard_count]  # Equal length on every host.
  return ds


def state_to_json(state: dict[str, Any]) -> str:
  return json.dumps(state, sort_keys=True)


def state_from_json(text: str) -> dict[str, Any]:
  return json.loads(text)


class BatchIterator(grain.DatasetIterator):
  """Iterates numpy batch dicts; checkpointable with get_state()/set_state().

  A grain DatasetIterator, so besides get_state/set_state it works with grain's orbax
  integration (`grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)`, or the orbax v1
  save/load methods), which store the JSON state per process.

  Attributes:
    dataset: the grain IterDataset behind it.
    report: the DataReport of loading + encoding (skips, truncations).
    records: the validated records (prompt iterators: `example_id` indexes this list).
    group_names: comparison iterators: `group` ids index this list.
    fingerprint: what the state is only valid for (data size, seed, shapes, shard).
  """

  def __init__(self, dataset: grain.IterDataset, *, fingerprint: dict[str, Any],
               report: DataReport, records: Sequence[Any], group_names: Sequence[str] = ()):
    self._it = iter(dataset)
    super().__init__(self._it)
    self.dataset = dataset
    self.fingerprint = fingerprint
    self.report = report
    self.records = records
    self.group_names = list(group_names)

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict[str, Any]:
    """A JSON-serialisable snapshot: the position of the NEXT batch to be produced."""
    return {"version": STATE_VERSION, "fingerprint": dict(self.fingerprint),
            "grain": self._it.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    """Resumes from `get_state()` of an iterator built with the same data and arguments."""
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"iterator state version {state.get('version')!r}, expected "
                       f"{STATE_VERSION}")
    saved = state.get("fingerprint", {})
    diff = {k: (saved.get(k), v) for k, v in self.fingerprint.items() if saved.get(k) != v}
    if diff:
      raise ValueError("the iterator state was saved by a different pipeline; "
                       f"(saved, current) differ for {diff}")
    self._it.set_state(state["grain"])


def _read_options(read_threads: int) -> grain.ReadOptions:
  # Examples are already in memory; threads would only contend for the GIL (grain's advice).
  return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(read_threads, 1))


def _lm_document(ex: dict[str, Any]) -> dict[str, np.ndarray]:
  return {"seq": batching.lm_document(ex["ids"], ex["loss_start"])}


def make_lm_iterator(records: Source, tokenizer, *, batch_size: int, seq_len: int, seed: int,
                     pack: bool, mode: str = "sft", shard_index: int | None = None,
                     shard_count: int | None = None, num_epochs: int | None = None,
                     shuffle: bool = True, drop_remainder: bool = True, add_bos: bool = False,
                     max_prompt_len: int | None = None, truncate: bool = True,
                     on_error: OnError = "raise", adapter: str | Adapter | None = None,
                     packing_bins: int | None = None, read_threads: int = 0,
                     log: bool = True, mix_texts: Source | None = None) -> BatchIterator:
  """Batches of SFT demonstrations (mode "sft") or pretraining text ("pretrain").

  Args:
    records: JSONL path(s), a sequence of record dicts, or parsed records (schemas.py).
    tokenizer: a tokenizers.Tokenizer.
    batch_size: B, rows per batch (per host).
    seq_len: T, tokens per row.
    seed: shuffling seed (same on every host).
    pack: pack several documents per row (first-fit) or one per row, right padded.
    mode: "sft" (records are demonstrations; loss on response + EOS) or "pretrain" (records
      are {"text"}; loss on every next token in the document).
    shard_index, shard_count: this host's shard; default jax.process_index()/process_count().
    num_epochs: None = repeat forever.
    shuffle: shuffle (re-drawn each epoch).
    drop_remainder: drop a final partial batch; False pads it with all-padding rows.
    add_bos: prepend BOS to each sequence.
    max_prompt_len, truncate: the truncation policy (encode.py).
    on_error: "raise" or "skip" (count by reason in `report`).
    adapter: public-layout adapter ("alpaca") or callable.
    packing_bins: bins filled at once when packing (default batch_size); more bins pack
      tighter but hold more documents back.
    read_threads: grain read threads (0: in the caller's thread; data are in memory).
    log: log the DataReport summary when loading ends.
    mix_texts: mode "sft" only: pretraining documents ({"text"}) shuffled in with the
      demonstrations, the loss on every token (an SFT that keeps its web text).

  Returns:
    A BatchIterator of {"tokens", "positions", "segment_ids", "targets", "loss_mask"}, each
    [B, T] (see batching.py).
  """
  if mode not in ("sft", "pretrain"):
    raise ValueError(f"mode must be 'sft' or 'pretrain', got {mode!r}")
  cfg = EncodeConfig(seq_len=seq_len, max_prompt_len=max_prompt_len, add_bos=add_bos,
                     truncate=truncate)
  kind = "demonstrations" if mode == "sft" else "texts"
  parsed, report = load_records(records, kind, adapter=adapter, on_error=on_error)
  skipped_before = report.num_skipped
  examples = encode_lm_records(parsed, tokenizer, cfg, report, mode=mode, on_error=on_error)
  report.num_kept = len(parsed) - (report.num_skipped - skipped_before)
  num_mixed = 0
  if mix_texts is not None:
    if mode != "sft":
      raise ValueError("mix_texts adds pretraining text to SFT data: it needs mode 'sft'")
    texts, mix_report = load_records(mix_texts, "texts", on_error=on_error)
    mixed = encode_lm_records(texts, tokenizer, cfg, mix_report, mode="pretrain",
                              on_error=on_error)
    examples, num_mixed = examples + mixed, len(mixed)
    if log:
      log_report(mix_report)
  if log:
    log_report(report)
  if not examples:
    raise report.nothing_left("examples")
  shard_index, shard_count = resolve_shard(shard_index, shard_count)
  pad = tokenizer.pad_id
  ds = index_dataset(examples, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                     shard_index=shard_index, shard_count=shard_count)
  it_ds = ds.map(_lm_document).to_iter_dataset(_read_options(read_threads))
  if pack:
    it_ds = grain.experimental.FirstFitPackIterDataset(
        it_ds, length_struct={"seq": seq_len}, num_packing_bins=packing_bins or batch_size,
        seed=seed, shuffle_bins=False, padding_struct={"seq": pad})
    it_ds = it_ds.map(batching.from_grain_packed)
  # Unpacked: lm_batch right-pads each document into its own row.
  it_ds = it_ds.batch(batch_size, drop_remainder=drop_remainder,
                      batch_fn=functools.partial(batching.lm_batch, batch_size=batch_size,
                                                 seq_len=seq_len, pad_id=pad))
  fingerprint = _fingerprint(examples, "lm", mode=mode, pack=pack, seed=seed, shuffle=shuffle,
                             num_epochs=num_epochs, batch_size=batch_size, seq_len=seq_len,
                             shard_index=shard_index, shard_count=shard_count,
                             packing_bins=packing_bins or batch_size,
                             # Only with a mix: fingerprints of plain SFT data stay as they were.
                             **({"mixed_texts": num_mixed} if num_mixed else {}))
  return BatchIterator(it_ds, fingerprint=fingerprint, report=report, records=parsed)


def make_comparison_iterator(records: Source, tokenizer, *, batch_size: int, seq_len: int,
                             seed: int, max_responses: int | None = None,
                             shard_index: int | None = None, shard_count: int | None = None,
                             num_epochs: int | None = None, shuffle: bool = True,
                             drop_remainder: bool = True, add_bos: bool = False,
                             max_prompt_len: int | None = None, truncate: bool = True,
                             on_error: OnError = "raise", adapter: str | Adapter | None = None,
                             read_threads: int = 0, log: bool = True,
                             packed_len: int | None = None, pack_bucket: int = 64
                             ) -> BatchIterator:
  """Batches of ranked comparisons for the reward model.

  Args:
    records: comparisons (JSONL path(s), dicts or parsed), see schemas.py.
    max_responses: K_max slots per prompt; default the largest K in the data. A record with
      more responses is a DataError "too_many_responses".
    adapter: "hh", "tldr" or a callable.
    packed_len: pack each prompt with its K responses into ONE row of at most this many
      tokens (the prompt written once; `batching.packed_comparison_row`, the model's
      `shared_prefix` attention) instead of K rows of `seq_len`; a comparison that does not
      fit is a DataError "too_long". Each batch is cut to a multiple of `pack_bucket` columns.
    (other arguments as in make_lm_iterator)

  Returns:
    A BatchIterator of {"tokens", "positions", "segment_ids"} [B, K_max, T] (segment 1 the
    prompt, 2 the response: one sequence under the model's `shared_prefix` attention; packed:
    [B, T'] and "response_id" [B, K_max]), "k_mask" and "last_index" [B, K_max], "group" [B] (index into
    `group_names`, -1 = none); slot 0 of each prompt holds the best response. `records` are the
    validated Comparisons.
  """
  cfg = EncodeConfig(seq_len=seq_len, max_prompt_len=max_prompt_len, add_bos=add_bos,
                     truncate=truncate)
  parsed, report = load_records(records, "comparisons", adapter=adapter, on_error=on_error)
  if not parsed:
    raise report.nothing_left("comparisons")
  k_max = max_responses or max(len(c.responses) for c in parsed)
  if k_max < 2:
    raise ValueError(f"max_responses must be >= 2, got {k_max}")
  # Sorted names, so group ids agree on every host whatever its shard.
  group_names = sorted({c.group for c in parsed if c.group is not None})
  group_ids = {g: i for i, g in enumerate(group_names)}

  def encoder(i, cmp):
    gid = group_ids[cmp.group] if cmp.group is not None else -1
    return functools.partial(encode_comparison, cmp, tokenizer, cfg, report, k_max=k_max,
                             group_id=gid, example_id=i, packed_len=packed_len)
  examples = _encode_all(parsed, encoder, report, on_error, log, "comparisons")
  shard_index, shard_count = resolve_shard(shard_index, shard_count)
  pad = tokenizer.pad_id
  ds = index_dataset(examples, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                     shard_index=shard_index, shard_count=shard_count)
  if packed_len:
    ds = ds.map(functools.partial(_packed_comparison_row, k_max=k_max, seq_len=packed_len,
                                  pad_id=pad))
    empty = functools.partial(batching.empty_packed_comparison_row, k_max, packed_len, pad)
    collate = functools.partial(_collate_packed, batch_size=batch_size, empty_row=empty,
                                bucket=pack_bucket)
  else:
    ds = ds.map(functools.partial(_comparison_row, k_max=k_max, seq_len=seq_len, pad_id=pad))
    empty = functools.partial(batching.empty_comparison_row, k_max, seq_len, pad)
    collate = functools.partial(batching.collate, batch_size=batch_size, empty_row=empty)
  it_ds = ds.to_iter_dataset(_read_options(read_threads)).batch(
      batch_size, drop_remainder=drop_remainder, batch_fn=collate)
  fingerprint = _fingerprint(examples, "comparison", seed=seed, shuffle=shuffle,
                             num_epochs=num_epochs, batch_size=batch_size, seq_len=seq_len,
                             k_max=k_max, shard_index=shard_index, shard_count=shard_count,
                             **({"packed_len": packed_len, "pack_bucket": pack_bucket}
                                if packed_len else {}))
  return BatchIterator(it_ds, fingerprint=fingerprint, report=report, records=parsed,
                       group_names=group_names)


def _comparison_row(ex: dict[str, Any], k_max: int, seq_len: int, pad_id: int):
  return batching.comparison_row(ex["seqs"], k_max, seq_len, pad_id, ex["group"],
                                 prompt_len=ex["prompt_len"])


def _encode_all(parsed: Sequence[Any], encoder: Callable[[int, Any], Callable[[], Any]],
                report: DataReport, on_error: OnError, log: bool, what: str) -> list[Any]:
  """Encodes every record (`encoder(i, record)()`), skipping or raising on DataErrors as
  `on_error` says; logs the report; raises if nothing is left."""
  examples = []
  for i, rec in enumerate(parsed):
    ex = guarded(encoder(i, rec), report, on_error)
    if ex is not None:
      examples.append(ex)
  report.num_kept = len(examples)
  if log:
    log_report(report)
  if not examples:
    raise report.nothing_left(what)
  return examples


def _packed_comparison_row(ex: dict[str, Any], k_max: int, seq_len: int, pad_id: int):
  return batching.packed_comparison_row(ex["seqs"], ex["prompt_len"], k_max, seq_len, pad_id,
                                        ex["group"])


def _collate_packed(rows, batch_size: int, empty_row, bucket: int):
  return batching.trim_packed(batching.collate(rows, batch_size, empty_row), bucket)


def make_prompt_iterator(records: Source, tokenizer, *, batch_size: int, prompt_len: int,
                         seed: int = 0, shard_index: int | None = None,
                         shard_count: int | None = None, num_epochs: int | None = None,
                         shuffle: bool = True, drop_remainder: bool = True,
                         add_bos: bool = False, truncate: bool = True,
                         on_error: OnError = "raise", read_threads: int = 0,
                         log: bool = True) -> BatchIterator:
  """Left-padded prompt batches for generation / PPO / evaluation.

  For evaluation use shuffle=False, num_epochs=1, drop_remainder=False: every prompt appears
  once and the last batch is filled with padding rows whose example_id is -1.

  Args:
    prompt_len: P; longer prompts are cut from the left (or, truncate=False, are errors).
    (other arguments as in make_lm_iterator)

  Returns:
    A BatchIterator of {"tokens", "segment_ids", "positions"} [B, P] and "example_id" [B];
    `iterator.records[example_id]` is the PromptRecord (with its metadata, e.g. gold answers).
  """
  cfg = EncodeConfig(seq_len=prompt_len + 2, max_prompt_len=prompt_len, add_bos=add_bos,
                     truncate=truncate)
  parsed, report = load_records(records, "prompts", on_error=on_error)
  examples = _encode_all(
      parsed, lambda i, rec: functools.partial(encode_prompt, rec, tokenizer, cfg, report,
                                               example_id=i),
      report, on_error, log, "prompts")
  shard_index, shard_count = resolve_shard(shard_index, shard_count)
  pad = tokenizer.pad_id
  ds = index_dataset(examples, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                     shard_index=shard_index, shard_count=shard_count)
  ds = ds.map(functools.partial(_prompt_row, prompt_len=prompt_len, pad_id=pad))
  empty = functools.partial(batching.empty_prompt_row, prompt_len, pad)
  it_ds = ds.to_iter_dataset(_read_options(read_threads)).batch(
      batch_size, drop_remainder=drop_remainder,
      batch_fn=functools.partial(batching.collate, batch_size=batch_size, empty_row=empty))
  fingerprint = _fingerprint(examples, "prompt", seed=seed, shuffle=shuffle,
                             num_epochs=num_epochs, batch_size=batch_size,
                             prompt_len=prompt_len, shard_index=shard_index,
                             shard_count=shard_count)
  return BatchIterator(it_ds, fingerprint=fingerprint, report=report, records=parsed)


def _prompt_row(ex: dict[str, Any], prompt_len: int, pad_id: int):
  return batching.prompt_row(ex["ids"], prompt_len, pad_id, ex["example_id"])


def _fingerprint(examples: Sequence[dict[str, Any]], kind: str, **config) -> dict[str, Any]:
  """Cheap identity of data + config: a resumed state must come from the same pipeline."""
  def n_tokens(ex):
    return int(sum(len(s) for s in ex["seqs"])) if "seqs" in ex else int(len(ex["ids"]))
  return {"kind": kind, "num_examples": len(examples),
          "num_tokens": int(sum(n_tokens(ex) for ex in examples)), **config}
